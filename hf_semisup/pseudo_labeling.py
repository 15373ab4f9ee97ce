"""Labeling an unlabeled pool with a teacher, across processes, and choosing which pseudo-labels to keep."""

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import LENGTH_COLUMN, MODEL_INPUT_COLUMNS


@torch.inference_mode()
def predict_pool(model, dataset, collator, accelerator, batch_size: int, desc: str = "Pseudo-labeling"):
    """
    The model's argmax label and top softmax probability for every row of a tokenized `dataset`, in order.

    Each process labels an interleaved shard (rows `rank, rank + world_size, ...`) sorted by length, so batches pad
    little; results carry their row index and are gathered, so every row is labeled exactly once whatever the world
    size, and every process returns the same arrays.

    Returns:
        `(labels, confidences)`: an `int64` and a `float32` numpy array of length `len(dataset)`.
    """
    num_rows = len(dataset)
    rank, world_size = accelerator.process_index, accelerator.num_processes
    shard = np.arange(rank, num_rows, world_size)
    if LENGTH_COLUMN in dataset.column_names:
        lengths = np.asarray(dataset.select(shard)[LENGTH_COLUMN]) if len(shard) else np.zeros(0, dtype=np.int64)
        # Longest first: a too-large batch fails at once, not at the end of the pass.
        shard = shard[np.argsort(-lengths, kind="stable")]
    inputs_only = dataset.select_columns([c for c in dataset.column_names if c in MODEL_INPUT_COLUMNS])

    was_training = model.training
    model.eval()
    indices, labels, confidences = [], [], []
    progress = tqdm(total=num_rows, desc=desc, unit="rows", disable=not accelerator.is_main_process)
    try:
        for start in range(0, len(shard), batch_size):
            rows = shard[start : start + batch_size]
            batch = inputs_only[rows]
            features = [{k: values[i] for k, values in batch.items()} for i in range(len(rows))]
            inputs = {k: v.to(accelerator.device) for k, v in collator(features).items()}
            with accelerator.autocast():
                logits = model(**inputs).logits
            probabilities = torch.softmax(logits.float(), dim=-1)
            confidence, label = probabilities.max(dim=-1)
            indices.append(torch.as_tensor(rows, device=accelerator.device))
            labels.append(label)
            confidences.append(confidence)
            progress.update(len(rows) * world_size)
    finally:
        progress.close()
        model.train(was_training)

    def cat(parts, dtype):
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=accelerator.device)

    local = torch.stack(
        [cat(indices, torch.long).double(), cat(labels, torch.long).double(), cat(confidences, torch.float).double()]
    )
    # Shards differ in size by at most one row: pad with index -1, gather, and drop the padding.
    gathered = accelerator.pad_across_processes(local, dim=1, pad_index=-1)
    gathered = accelerator.gather(gathered.unsqueeze(0)).reshape(world_size, 3, -1).permute(1, 0, 2).reshape(3, -1)
    gathered = gathered[:, gathered[0] >= 0].cpu().numpy()
    order = gathered[0].astype(np.int64)
    if len(order) != num_rows or not np.array_equal(np.sort(order), np.arange(num_rows)):
        raise RuntimeError(f"Pseudo-labeling returned {len(order)} rows for a pool of {num_rows}.")
    out_labels = np.empty(num_rows, dtype=np.int64)
    out_confidences = np.empty(num_rows, dtype=np.float32)
    out_labels[order] = gathered[1].astype(np.int64)
    out_confidences[order] = gathered[2].astype(np.float32)
    return out_labels, out_confidences


def select_pseudo_labels(
    labels: np.ndarray,
    confidences: np.ndarray,
    threshold: float,
    class_prior: np.ndarray | None = None,
    max_pseudo_labels: int | None = None,
) -> np.ndarray:
    """
    Row indices of the pseudo-labels to keep, most confident first.

    Only rows whose confidence reaches `threshold` are candidates. With a `class_prior` (class balancing), class `c`
    keeps its `floor(n * prior[c])` most confident candidates, where `n` is the largest total every class can fill
    (and at most `max_pseudo_labels`): the kept set has the labeled class proportions, and a class with no candidate
    means nothing is kept. Without it, the `max_pseudo_labels` most confident candidates are kept.
    """
    labels, confidences = np.asarray(labels), np.asarray(confidences)
    candidates = np.flatnonzero(confidences >= threshold)
    # Most confident first; ties keep pool order so the selection is deterministic.
    candidates = candidates[np.argsort(-confidences[candidates], kind="stable")]
    if class_prior is None:
        return candidates[:max_pseudo_labels] if max_pseudo_labels is not None else candidates

    class_prior = np.asarray(class_prior, dtype=np.float64)
    class_prior = class_prior / class_prior.sum()
    counts = np.bincount(labels[candidates], minlength=len(class_prior))
    present = class_prior > 0
    total = np.floor(np.min(counts[present] / class_prior[present]) + 1e-9)
    if max_pseudo_labels is not None:
        total = min(total, max_pseudo_labels)
    quotas = np.floor(total * class_prior + 1e-9).astype(np.int64)
    kept = [candidates[labels[candidates] == c][: quotas[c]] for c in range(len(class_prior))]
    kept = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    return kept[np.argsort(-confidences[kept], kind="stable")]
