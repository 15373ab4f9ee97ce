"""
The rules a run's settings must follow, each stated once.

- Per field: [`SemiSupervisedConfig`]'s `_parameter_constraints` maps a field to what it accepts (sklearn's
  `_parameter_constraints`): [`Integer`], [`Real`], [`Options`], [`Boolean`], or `None`; [`check_constraints`] checks
  them in `__post_init__`, with one message shape: "`field` must be <what it accepts>, got <value>."
- Across the model and the data: [`check_run`], called once by the trainer when the model, tokenizer and datasets are
  known.
"""

import dataclasses
import math
from collections.abc import Callable

import datasets

from .metrics import DEFAULT_METRIC_NAMES


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Integer:
    """An integer (not a bool) >= `low`."""

    low: int

    def accepts(self, value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= self.low

    def describe(self) -> str:
        return f"an integer >= {self.low}"


@dataclasses.dataclass(frozen=True)
class Real:
    """A number (not a bool, not NaN) between `low` and `high` (`None`: unbounded), `closed` on the given sides."""

    low: float
    high: float | None = None
    closed: str = "neither"  # "left", "right", "both" or "neither"
    finite: bool = False

    def accepts(self, value) -> bool:
        if not _is_number(value) or math.isnan(value) or (self.finite and math.isinf(value)):
            return False
        above = value >= self.low if self.closed in ("left", "both") else value > self.low
        below = self.high is None or (value <= self.high if self.closed in ("right", "both") else value < self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            sign = ">=" if self.closed in ("left", "both") else ">"
            return f"{'a finite number' if self.finite else 'a number'} {sign} {self.low:g}"
        name = {"neither": "open", "both": "closed"}.get(self.closed, "half-open")
        left = "[" if self.closed in ("left", "both") else "("
        right = "]" if self.closed in ("right", "both") else ")"
        return f"in the {name} interval {left}{self.low:g}, {self.high:g}{right}"


@dataclasses.dataclass(frozen=True)
class Options:
    """One of `values()` (a callable, so that a registry can grow after the config class is defined)."""

    values: Callable[[], tuple]

    def accepts(self, value) -> bool:
        return value in self.values()

    def describe(self) -> str:
        return f"one of {tuple(self.values())}"


@dataclasses.dataclass(frozen=True)
class Boolean:
    def accepts(self, value) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "True or False"


@dataclasses.dataclass(frozen=True)
class Template:
    """A string with exactly one `{}` for the class name."""

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value.count("{}") == 1

    def describe(self) -> str:
        return "a string with one `{}` for the class name"


def check_constraints(config, constraints: dict[str, list]):
    """Raise a `ValueError` naming the field, what it accepts and the value, for the first field that breaks its rule."""
    for name, accepted in constraints.items():
        value = getattr(config, name)
        if any(rule is None and value is None or rule is not None and rule.accepts(value) for rule in accepted):
            continue
        described = " or ".join("None" if rule is None else rule.describe() for rule in accepted)
        raise ValueError(f"`{name}` must be {described}, got {value!r}.")


def _needs_distribution(strategy: str) -> bool:
    from .selection import SELECTION_RULES

    return SELECTION_RULES[strategy].needs_distribution


def check_run(args, *, model_config, unlabeled_dataset, eval_dataset, compute_loss_func, compute_metrics) -> None:
    """
    The rules that involve the model (its `config`, `None` for a plain `torch.nn.Module`), the datasets or the trainer's
    other arguments, as one `ValueError`.
    """
    weight = args.consistency_weight or 0.0
    if (args.self_training_rounds > 0 or weight > 0) and unlabeled_dataset is None:
        raise ValueError(
            "`unlabeled_dataset` is required when `self_training_rounds` > 0 or `consistency_weight` > 0 (got "
            f"self_training_rounds={args.self_training_rounds}, consistency_weight={args.consistency_weight})."
        )
    if weight > 0 and isinstance(unlabeled_dataset, datasets.IterableDataset):
        raise ValueError(
            f"`consistency_weight`={args.consistency_weight} needs a `datasets.Dataset` as `unlabeled_dataset` "
            "(its sampler reshuffles the pool each pass); got an `IterableDataset`."
        )
    for name, value, what in (
        ("consistency_weight", weight > 0, "the consistency loss"),
        ("soft_pseudo_labels", args.soft_pseudo_labels, "the soft pseudo-label loss"),
    ):
        if value and compute_loss_func is not None:
            raise ValueError(
                f"`compute_loss_func` cannot be combined with `{name}`={getattr(args, name)}: {what} computes the "
                "supervised cross-entropy itself."
            )
    metric = args.metric_for_best_model
    if metric is not None and compute_metrics is None and not isinstance(eval_dataset, dict):
        if metric.removeprefix("eval_") not in DEFAULT_METRIC_NAMES:
            raise ValueError(
                f"`metric_for_best_model`={metric!r} is not a metric of the evaluation: with the default "
                f"`compute_metrics` it is one of {', '.join(map(repr, DEFAULT_METRIC_NAMES))}."
            )
    if args.rollback_on_worse_eval and eval_dataset is None:
        raise ValueError("`rollback_on_worse_eval`=True compares eval metrics between rounds: pass an `eval_dataset`.")

    if (args.self_training_rounds > 0 or weight > 0) and getattr(model_config, "num_labels", None) is None:
        raise ValueError(
            "Self-training and the consistency loss need a classifier with a `config` (`num_labels`, `id2label`), as "
            "`AutoModelForSequenceClassification` builds: the model has none."
        )
    num_labels = getattr(model_config, "num_labels", 0)
    for name, needs_classes in (
        ("consistency_weight", weight > 0),
        ("soft_pseudo_labels", args.soft_pseudo_labels),
        ("selection_strategy", args.self_training_rounds > 0 and _needs_distribution(args.selection_strategy)),
    ):
        if needs_classes and num_labels < 2:
            shown = " > 0" if name == "consistency_weight" else f"={getattr(args, name)!r}"
            raise ValueError(f"`{name}`{shown} needs a classifier with >= 2 labels, got `num_labels`={num_labels}.")
    if args.pseudo_label_top_k > num_labels and model_config is not None:
        raise ValueError(
            f"`pseudo_label_top_k` must be at most the model's {num_labels} classes, got {args.pseudo_label_top_k}."
        )
