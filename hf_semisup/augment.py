"""
The noised copy of an unlabeled batch that the consistency loss compares with the clean one.

An augmentation is an object with `augment(batch, seeds) -> (noised batch, rates)`: `batch` holds padded model inputs
on the CPU, `seeds` one integer per row (a row's noise must depend only on its seed and its tokens, never on its batch,
so that a resumed run draws the same), and `rates` maps a log key to `(count, out of)`, which the consistency loss sums
over each logging window and logs as a ratio. [`AUGMENTATIONS`] maps the `consistency_augmentation` names to builders
`(config, tokenizer) -> augmentation`; a new augmentation is a class and a line there.

- `"token_dropout"` ([`TokenDropout`]): drops or masks each non-special token with probability `token_dropout`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .data import MODEL_INPUT_COLUMNS


class Augmentation:
    """The augmentation interface (see the module's docstring)."""

    def augment(self, batch: dict, seeds: list[int]) -> tuple[dict, dict[str, tuple[int, int]]]:
        raise NotImplementedError


@dataclass
class TokenDropout(Augmentation):
    r"""
    Drops tokens of a padded batch, never special tokens (CLS, SEP, padding, ...).

    Each row draws its randoms from its own `torch.Generator`, one per real token in order, so a row's dropped positions
    depend only on its seed and its tokens, not on the batch it is in or on how much it is padded.

    Args:
        probability (`float`):
            Chance that each droppable token is dropped.
        mode (`str`):
            `"mask"` replaces dropped tokens by `replacement_id`; `"delete"` removes them and re-pads.
        special_ids (`torch.Tensor`):
            Token ids never dropped.
        pad_token_id (`int`):
            Id written into the padding that `"delete"` creates.
        replacement_id (`int` or `None`):
            The mask token (or the unknown token), required by `"mask"`.
        padding_side (`str`):
            `"right"` or `"left"`, as the tokenizer pads.
    """

    probability: float
    mode: str
    special_ids: torch.Tensor
    pad_token_id: int
    replacement_id: int | None = None
    padding_side: str = "right"

    @classmethod
    def from_tokenizer(cls, tokenizer, probability: float, mode: str) -> "TokenDropout":
        if tokenizer is None or not hasattr(tokenizer, "all_special_ids"):
            raise ValueError(
                f"`consistency_weight` > 0 needs a tokenizer as `processing_class` (token dropout takes its special, "
                f"mask and padding tokens from it), got {tokenizer!r}."
            )
        if tokenizer.pad_token_id is None:
            raise ValueError(
                f"`consistency_weight` > 0 needs a tokenizer with a padding token; {type(tokenizer).__name__} has none "
                "(set `tokenizer.pad_token`)."
            )
        replacement_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
        if mode == "mask" and replacement_id is None and probability > 0:
            raise ValueError(
                f"`token_dropout_mode`='mask' needs a mask or unknown token, and {type(tokenizer).__name__} has "
                "neither: use `token_dropout_mode`='delete'."
            )
        special_ids = {tokenizer.pad_token_id, *tokenizer.all_special_ids}
        return cls(
            probability=probability,
            mode=mode,
            special_ids=torch.tensor(sorted(special_ids), dtype=torch.long),
            pad_token_id=tokenizer.pad_token_id,
            replacement_id=replacement_id,
            padding_side=tokenizer.padding_side,
        )

    def __call__(self, batch: dict, seeds: list[int]) -> tuple[dict, int, int]:
        """
        Returns:
            `(dropped, num_dropped, num_droppable)`: a new batch with the model inputs of `batch` (on the CPU), the
            number of tokens dropped and the number that could have been.
        """
        input_ids = batch["input_ids"]
        if len(seeds) != input_ids.shape[0]:
            raise ValueError(f"Token dropout got {len(seeds)} seeds for a batch of {input_ids.shape[0]} rows.")
        attention_mask = batch.get("attention_mask")
        real = attention_mask.bool() if attention_mask is not None else input_ids.ne(self.pad_token_id)
        droppable = real & ~torch.isin(input_ids, self.special_ids)
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUT_COLUMNS}
        if self.probability <= 0:
            return inputs, 0, int(droppable.sum())

        randoms = torch.ones(input_ids.shape)  # padding and special tokens are never below the probability
        generator = torch.Generator()
        for row, seed in enumerate(seeds):
            columns = real[row].nonzero().squeeze(1)
            generator.manual_seed(seed)
            randoms[row, columns] = torch.rand(len(columns), generator=generator)
        drop = droppable & (randoms < self.probability)

        if self.mode == "mask":
            inputs["input_ids"] = input_ids.masked_fill(drop, self.replacement_id)
            return inputs, int(drop.sum()), int(droppable.sum())
        return self._delete(inputs, real, drop, droppable)

    def augment(self, batch: dict, seeds: list[int]) -> tuple[dict, dict[str, tuple[int, int]]]:
        dropped, num_dropped, num_droppable = self(batch, seeds)
        return dropped, {"token_dropout_rate": (num_dropped, num_droppable)}

    def _delete(self, inputs: dict, real: torch.Tensor, drop: torch.Tensor, droppable: torch.Tensor):
        keep = real & ~drop
        # A row with no special token could lose every token, and a fully padded row makes attention undefined: such a
        # row keeps its first token.
        emptied = (keep.sum(1) == 0) & (real.sum(1) > 0)
        if emptied.any():
            first = real.int().argmax(1)
            restore = torch.zeros_like(drop)
            restore[emptied, first[emptied]] = True
            drop, keep = drop & ~restore, keep | restore

        # A stable sort on "is padding" moves the kept tokens together, in order, to the padded side's opposite end.
        right = self.padding_side == "right"
        order = torch.argsort((~keep if right else keep).int(), dim=1, stable=True)
        lengths = keep.sum(1)
        width = max(int(lengths.max()), 1)
        columns = torch.arange(width)
        if right:
            order, new_mask = order[:, :width], columns[None, :] < lengths[:, None]
        else:
            order, new_mask = order[:, -width:], columns[None, :] >= (width - lengths)[:, None]

        out = {}
        for key, value in inputs.items():
            gathered = value.gather(1, order)
            fill = self.pad_token_id if key == "input_ids" else 0
            out[key] = gathered.masked_fill(~new_mask, fill)
        out["attention_mask"] = new_mask.to(
            inputs["attention_mask"].dtype if "attention_mask" in inputs else torch.long
        )
        return out, int(drop.sum()), int(droppable.sum())


AUGMENTATIONS: dict[str, Callable] = {
    "token_dropout": lambda config, tokenizer: TokenDropout.from_tokenizer(
        tokenizer, config.token_dropout, config.token_dropout_mode
    ),
}


def build_augmentation(config, tokenizer) -> Augmentation:
    """The augmentation `config.consistency_augmentation` names."""
    return AUGMENTATIONS[config.consistency_augmentation](config, tokenizer)
