"""
Soft pseudo-labels: selected rows train on the teacher's whole probability distribution, weighted by its confidence.

The targets travel with the training rows as two dataset columns (a fixed-size float vector and a float), which the
default collator stacks into tensors; [`SemiSupervisedTrainer.compute_loss`] pops them before the forward pass.
"""

import datasets
import numpy as np
import torch
import torch.nn.functional as F


SOFT_TARGETS_COLUMN = "hf_semisup_soft_targets"
TARGET_WEIGHT_COLUMN = "hf_semisup_target_weight"
SOFT_TARGET_COLUMNS = (SOFT_TARGETS_COLUMN, TARGET_WEIGHT_COLUMN)


def with_soft_targets(dataset: datasets.Dataset, targets: np.ndarray, weights: np.ndarray) -> datasets.Dataset:
    """`dataset` with each row's target distribution (`targets`, `(num_rows, num_labels)`) and loss weight."""
    targets = np.asarray(targets, dtype=np.float32)
    vector = datasets.List(datasets.Value("float32"), length=targets.shape[1])
    dataset = dataset.add_column(SOFT_TARGETS_COLUMN, list(targets), feature=vector)
    return dataset.add_column(
        TARGET_WEIGHT_COLUMN, np.asarray(weights, dtype=np.float32), feature=datasets.Value("float32")
    )


def one_hot_targets(dataset: datasets.Dataset, num_labels: int) -> datasets.Dataset:
    """A labeled `dataset` with its `labels` as one-hot soft targets of weight 1 (the hard cross-entropy)."""
    labels = np.asarray(dataset["labels"], dtype=np.int64)
    return with_soft_targets(dataset, np.eye(num_labels, dtype=np.float32)[labels], np.ones(len(labels)))


def pop_soft_targets(inputs: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Remove the soft targets and weights from a batch: `(targets, weights)`, or `None` when it has none."""
    if SOFT_TARGETS_COLUMN not in inputs:
        return None
    return inputs.pop(SOFT_TARGETS_COLUMN), inputs.pop(TARGET_WEIGHT_COLUMN)


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """
    Per-row `weight * CE(target, softmax(logits))` in float32. A one-hot target of weight 1 gives the hard
    cross-entropy of its class (with the same label smoothing).
    """
    losses = F.cross_entropy(logits.float(), targets.float(), reduction="none", label_smoothing=label_smoothing)
    return losses * weights.float()


def soft_label_loss(model, inputs: dict, soft_targets, label_smoothing: float = 0.0, return_outputs: bool = False):
    """
    The mean over the micro-batch's rows of `weight * CE(soft target)`: the hard path's per-batch mean, which the
    Trainer then divides by the gradient accumulation steps. The model's own (hard) loss is not computed.
    """
    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    losses = soft_cross_entropy(logits, *soft_targets, label_smoothing)
    loss = losses.sum() / max(len(losses), 1)
    return (loss, outputs) if return_outputs else loss


__all__ = [
    "SOFT_TARGETS_COLUMN",
    "SOFT_TARGET_COLUMNS",
    "TARGET_WEIGHT_COLUMN",
    "one_hot_targets",
    "pop_soft_targets",
    "soft_cross_entropy",
    "soft_label_loss",
    "with_soft_targets",
]
