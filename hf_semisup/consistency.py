"""
Token-dropout consistency regularization (UDA-style): the prediction on an unlabeled text with some tokens dropped is
pulled toward the prediction on the clean text, with no gradient through the clean text.

Everything random here is a pure function of `(seed, round, position in the unlabeled stream)`: which unlabeled rows a
step sees, and which of their tokens are dropped. The same seed therefore gives the same batches and positions whatever
the batching, on resume too (the position is recomputed from the restored `global_step`).
"""

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding

from .augment import Augmentation, TokenDropout
from .data import MODEL_INPUT_COLUMNS
from .soft_labels import soft_cross_entropy


CONSISTENCY_KEY = "hf_semisup_consistency"
"""Key of the [`ConsistencyBatch`] attached to each labeled micro-batch of a training step."""

# Namespaces of `derive_seed`, so that shuffling and token dropout never share a random stream.
_SHUFFLE, _DROPOUT = 0, 1


def derive_seed(*values: int) -> int:
    """A 63-bit seed mixed from non-negative integers (through `numpy.random.SeedSequence`, so nearby inputs differ)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def consistency_weight_at(step: int, weight: float, rampup_steps: int) -> float:
    """Lambda at optimizer step `step`: rises linearly from 0 to `weight` over `rampup_steps`, then stays there."""
    if rampup_steps <= 0:
        return float(weight)
    return float(weight) * min(1.0, step / rampup_steps)


# ---- Divergence ------------------------------------------------------------------------------------------------------
def clean_view_targets(logits: torch.Tensor, temperature: float, confidence: float):
    """
    The target and the confidence mask from the clean-text logits, in float32.

    Returns:
        `(target_log_probs, mask)`: `log_softmax(logits / temperature)` and whether the top probability of the
        unsharpened `softmax(logits)` reaches `confidence` (as UDA masks on the model's own confidence).
    """
    logits = logits.detach().float()
    top_probability = torch.softmax(logits, dim=-1).max(dim=-1).values
    return F.log_softmax(logits / temperature, dim=-1), top_probability >= confidence


def _kl(log_probs: torch.Tensor, target_log_probs: torch.Tensor) -> torch.Tensor:
    return F.kl_div(log_probs, target_log_probs, log_target=True, reduction="none").sum(-1)


def _mse(log_probs: torch.Tensor, target_log_probs: torch.Tensor) -> torch.Tensor:
    return (log_probs.exp() - target_log_probs.exp()).pow(2).sum(-1)


# The `consistency_loss` names (the config checks a value is one of them).
DIVERGENCES = {"kl": _kl, "mse": _mse}


def consistency_divergence(target_log_probs: torch.Tensor, logits: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """
    Per-example D(target || softmax(logits)) in float32, whatever the dtype of `logits` (autocast), with no gradient
    through the target.

    `"kl"` is `sum target * (log target - log p)`; `"mse"` is `sum (target - p) ** 2` over the classes. Working from
    log-probabilities keeps both finite for extreme logits, where `softmax` underflows to exact zeros.
    """
    return DIVERGENCES[kind](F.log_softmax(logits.float(), dim=-1), target_log_probs.detach().float())


# ---- Unlabeled stream ------------------------------------------------------------------------------------------------
class UnlabeledBatchSampler(Sampler):
    r"""
    An endless batch sampler over the unlabeled pool, sharded across processes.

    The stream is the concatenation of permutations of the pool, a fresh one per pass (seeded by `seed` and the pass
    number). Global batch `k` covers stream positions `[k * world_size * batch_size, (k + 1) * world_size *
    batch_size)`, and process `rank` takes its `rank`-th slice: in each pass, every row goes to exactly one process, and
    the stream never depends on the labeled loader's length.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self._pass, self._permutation = None, None

    def positions(self, k: int) -> np.ndarray:
        """Stream positions of this process's rows in batch `k`."""
        first = (k * self.world_size + self.rank) * self.batch_size
        return np.arange(first, first + self.batch_size, dtype=np.int64)

    def indices(self, k: int) -> list[int]:
        """Pool rows of this process's batch `k`."""
        rows = []
        for position in self.positions(k):
            pass_, offset = divmod(int(position), self.num_rows)
            rows.append(int(self._permutation_of(pass_)[offset]))
        return rows

    def _permutation_of(self, pass_: int) -> torch.Tensor:
        if self._pass != pass_:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, _SHUFFLE, pass_))
            self._pass, self._permutation = pass_, torch.randperm(self.num_rows, generator=generator)
        return self._permutation

    def __iter__(self):
        k = self.start
        while True:
            yield self.indices(k)
            k += 1


# ---- The regularizer -------------------------------------------------------------------------------------------------
@dataclass
class ConsistencyBatch:
    """What one labeled micro-batch needs for its consistency term; built before the step's first forward-backward."""

    inputs: dict  # the token-dropped unlabeled batch, on the device
    target_log_probs: torch.Tensor  # float32, no grad
    mask: torch.Tensor  # bool: passed the confidence mask
    weight: float  # lambda at this step
    labeled_total: float  # labeled examples in the whole accumulated step, all processes
    unmasked_total: float  # unlabeled examples that passed the mask, whole step, all processes


class ConsistencyRegularizer:
    r"""
    Draws the unlabeled batches of each training step, builds their targets, and computes the combined loss.

    The trainer calls [`~ConsistencyRegularizer.prepare_step`] once per optimizer step with all its micro-batches (so the
    normalizers cover the whole accumulated batch on all processes), [`~ConsistencyRegularizer.loss`] per micro-batch,
    and [`~ConsistencyRegularizer.pop_metrics`] when it logs.

    Args:
        args ([`SemiSupervisedConfig`]):
            The configuration (the consistency fields, `seed`, `per_device_train_batch_size`, `label_smoothing_factor`,
            `gradient_accumulation_steps`, `dataloader_num_workers`).
        unlabeled_dataset ([`~datasets.Dataset`]):
            The tokenized unlabeled pool; columns other than the model inputs (e.g. `length`) are dropped.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Pads the unlabeled batches.
        accelerator ([`~accelerate.Accelerator`]):
            The trainer's, for the process rank, autocast and reductions.
        augmentation ([`~hf_semisup.augment.Augmentation`], *optional*):
            Makes the noised copy of each unlabeled batch. Defaults to token dropout with the config's settings.
    """

    def __init__(self, args, unlabeled_dataset, tokenizer, accelerator, augmentation: Augmentation | None = None):
        self.args, self.accelerator = args, accelerator
        if augmentation is None:
            augmentation = TokenDropout.from_tokenizer(tokenizer, args.token_dropout, args.token_dropout_mode)
        self.augmentation = augmentation
        self.pad_token_id, self.padding_side = tokenizer.pad_token_id, tokenizer.padding_side
        self.dataset = unlabeled_dataset.select_columns(
            [c for c in unlabeled_dataset.column_names if c in MODEL_INPUT_COLUMNS]
        )
        self.collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        self.batch_size = max(1, round(args.unlabeled_batch_ratio * args.per_device_train_batch_size))
        self.metrics: dict[str, list] = defaultdict(list)
        self.sampler, self._iterator, self._next = None, None, None

    # ---- Unlabeled batches -------------------------------------------------------------------------------------------
    def _stream_seed(self, round_: int) -> int:
        return derive_seed(self.args.seed, round_)

    def unlabeled_batch(self, k: int, round_: int) -> tuple[dict, np.ndarray]:
        """This process's clean batch `k` of the round's stream (CPU) and the stream positions of its rows."""
        if self._iterator is None or self._next != (round_, k):
            # A new round, a resumed run, or an epoch whose last step had fewer micro-batches: restart the loader at `k`.
            self.sampler = UnlabeledBatchSampler(
                len(self.dataset),
                self.batch_size,
                seed=self._stream_seed(round_),
                rank=self.accelerator.process_index,
                world_size=self.accelerator.num_processes,
                start=k,
            )
            loader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                collate_fn=self.collator,
                num_workers=self.args.dataloader_num_workers,
                # Its own generator: building an iterator draws a seed (for workers) from the global RNG otherwise, and
                # a resumed run builds one where the uninterrupted run did not, shifting the dropout that follows.
                generator=torch.Generator().manual_seed(derive_seed(self._stream_seed(round_), k)),
            )
            self._iterator = iter(loader)
        self._next = (round_, k + 1)
        return dict(next(self._iterator)), self.sampler.positions(k)

    @torch.no_grad()
    def _clean_view(self, model, inputs: dict):
        # The unwrapped model, in eval mode: no second forward through the DDP wrapper, no dropout noise in the target,
        # and the global RNG (which drives the supervised dropout) is left untouched.
        was_training = model.training
        model.eval()
        try:
            with self.accelerator.autocast():
                outputs = model(**inputs)
        finally:
            model.train(was_training)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return clean_view_targets(logits, self.args.consistency_temperature, self.args.consistency_confidence)

    def prepare_step(self, batch_samples: list, model, step: int, round_: int, device):
        """
        Attach a [`ConsistencyBatch`] under [`CONSISTENCY_KEY`] to each labeled micro-batch of optimizer step `step`.

        Runs the clean-text forward of every micro-batch first, so the normalizers (labeled examples and unlabeled
        examples passing the mask, over the accumulated batch and all processes) are known before any backward: gradient
        accumulation then gives the gradient of the big batch, whatever the mask lets through in each micro-batch.
        """
        if step == 0:
            self.metrics.clear()  # a new round: what was not logged belongs to the previous one
        weight = consistency_weight_at(step, self.args.consistency_weight, self.args.consistency_rampup_steps)
        accumulation = self.args.gradient_accumulation_steps
        parts, labeled, unmasked = [], 0, 0
        for i, batch in enumerate(batch_samples):
            clean, positions = self.unlabeled_batch(step * accumulation + i, round_)
            seeds = [derive_seed(self.args.seed, round_, _DROPOUT, int(p)) for p in positions]
            dropped, rates = self.augmentation.augment(clean, seeds)
            clean = {k: v.to(device) for k, v in clean.items() if k in MODEL_INPUT_COLUMNS}
            dropped = {k: v.to(device) for k, v in dropped.items()}
            target_log_probs, mask = self._clean_view(model, clean)
            parts.append((dropped, target_log_probs, mask))
            labeled += int(batch["labels"].ne(-100).sum())
            unmasked += int(mask.sum())
            self.metrics["unmasked"].append(int(mask.sum()))
            self.metrics["unlabeled"].append(len(mask))
            for name, (count, total) in rates.items():
                self.metrics["rates"].append((name, count, total))
            self.metrics["weight"].append(weight)

        totals = torch.tensor([labeled, unmasked], dtype=torch.float64, device=device)
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        labeled_total, unmasked_total = totals.tolist()
        for batch, (dropped, target_log_probs, mask) in zip(batch_samples, parts):
            batch[CONSISTENCY_KEY] = ConsistencyBatch(
                dropped, target_log_probs, mask, weight, labeled_total, unmasked_total
            )

    # ---- Loss --------------------------------------------------------------------------------------------------------
    def loss(
        self,
        model,
        inputs: dict,
        batch: ConsistencyBatch,
        return_outputs: bool = False,
        soft_targets: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """
        The micro-batch's share of `CE(labeled) + lambda * mean over unmasked unlabeled examples of D(target || p(dropped
        text))`, both means taken over the whole accumulated batch on all processes. With `soft_targets` (`(targets,
        weights)` of soft pseudo-labels), the supervised term is `weight * CE(target)` per row instead.

        Labeled and dropped unlabeled rows go through `model` in one concatenated forward: with DDP, one forward per
        backward is what the wrapper supports. The result is already scaled for gradient accumulation, and multiplied by
        the number of processes because DDP averages the gradients.
        """
        labels = inputs["labels"]
        joint = concat_padded(
            {k: v for k, v in inputs.items() if k in MODEL_INPUT_COLUMNS},
            batch.inputs,
            self.pad_token_id,
            self.padding_side,
        )
        outputs = model(**joint)
        logits = (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float()
        labeled_logits, unlabeled_logits = logits[: len(labels)], logits[len(labels) :]

        if soft_targets is None:
            supervised = F.cross_entropy(
                labeled_logits, labels, reduction="sum", label_smoothing=self.args.label_smoothing_factor
            )
        else:
            supervised = soft_cross_entropy(labeled_logits, *soft_targets, self.args.label_smoothing_factor).sum()
        divergence = consistency_divergence(batch.target_log_probs, unlabeled_logits, self.args.consistency_loss)
        divergence_sum = (divergence * batch.mask).sum()
        self.metrics["divergence_sum"].append(divergence_sum.detach())

        world_size = self.accelerator.num_processes
        loss = world_size * (
            supervised / max(batch.labeled_total, 1.0) + batch.weight * divergence_sum / max(batch.unmasked_total, 1.0)
        )
        if not return_outputs:
            return loss
        if isinstance(outputs, dict):
            outputs["logits"] = labeled_logits
        return loss, outputs

    # ---- Logging -----------------------------------------------------------------------------------------------------
    def pop_metrics(self) -> dict[str, float]:
        """
        The logging window's `consistency_loss`, `consistency_weight`, `consistency_mask_rate` and the augmentation's
        rates (`token_dropout_rate`), summed over all processes, then cleared. Every process must call it at the same
        time (it reduces).
        """
        metrics, self.metrics = self.metrics, defaultdict(list)
        if not metrics.get("divergence_sum"):
            return {}
        rates = sorted({name for name, _, _ in metrics["rates"]})  # every process has the same augmentation
        device = metrics["divergence_sum"][0].device
        columns = [metrics[key] for key in ("divergence_sum", "unmasked", "unlabeled")]
        for name in rates:
            columns.append([count for key, count, _ in metrics["rates"] if key == name])
            columns.append([total for key, _, total in metrics["rates"] if key == name])
        totals = torch.stack([torch.as_tensor(column, dtype=torch.float64, device=device).sum() for column in columns])
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        divergence_sum, unmasked, unlabeled, *rate_sums = totals.tolist()
        logs = {
            "consistency_loss": divergence_sum / unmasked if unmasked else 0.0,
            "consistency_weight": float(np.mean(metrics["weight"])),
            "consistency_mask_rate": unmasked / unlabeled if unlabeled else 0.0,
        }
        for i, name in enumerate(rates):
            count, total = rate_sums[2 * i], rate_sums[2 * i + 1]
            logs[name] = count / total if total else 0.0
        return logs


def concat_padded(first: dict, second: dict, pad_token_id: int, padding_side: str = "right") -> dict:
    """Stack two batches of model inputs row-wise, padding the shorter one (input ids with `pad_token_id`, others with 0)."""
    width = max(first["input_ids"].shape[1], second["input_ids"].shape[1])
    out = {}
    for key in [k for k in MODEL_INPUT_COLUMNS if k in first or k in second]:
        parts = []
        for batch in (first, second):
            value = batch.get(key)
            if value is None:  # e.g. one side has no token_type_ids: the model's default is all zeros
                value = torch.zeros_like(batch["input_ids"])
                if key == "attention_mask":
                    value = batch["input_ids"].ne(pad_token_id).long()
            missing = width - value.shape[1]
            if missing:
                fill = pad_token_id if key == "input_ids" else 0
                pad = (missing, 0) if padding_side == "left" else (0, missing)
                value = F.pad(value, pad, value=fill)
            parts.append(value)
        out[key] = torch.cat(parts)
    return out


__all__ = [
    "CONSISTENCY_KEY",
    "ConsistencyBatch",
    "ConsistencyRegularizer",
    "TokenDropout",  # its home before augment.py
    "UnlabeledBatchSampler",
    "clean_view_targets",
    "concat_padded",
    "DIVERGENCES",
    "consistency_divergence",
    "consistency_weight_at",
    "derive_seed",
]
