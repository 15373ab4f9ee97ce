"""
Choosing which pseudo-labels a round keeps.

A selection rule is a pure function `rule(predictions, context) -> Selection` of the teacher's labeling pass
([`~hf_semisup.pseudo_labeling.PseudoLabels`]) and a [`SelectionContext`] (the round, the classes, the class shares
that class balance keeps, and the configuration): the same inputs give the same rows, so a resumed run selects what an
uninterrupted one did, whatever the number of processes. [`SELECTION_RULES`] maps the `selection_strategy` names to
them, and [`apply_rule`] is the one place that dispatches on it. A new rule is a function, a line in the registry and
the config field it reads.

- `"threshold"`: rows whose confidence reaches a fixed `confidence_threshold` ([`select_pseudo_labels`]).
- `"adaptive"`: a threshold per class that follows how well the model has learned the class, FlexMatch style
  ([`adaptive_class_thresholds`]), then as `"threshold"`.
- `"topk"`: no threshold; each round keeps the most confident rows of each class, a growing share of the pool
  (curriculum style, [`select_top_k`]).
- `"entropy"`: rows whose predictive entropy (normalized by that of the uniform distribution) is at most
  `entropy_threshold` ([`select_low_entropy`]): the whole distribution counts, not only its top class.

`class_balance` and `max_pseudo_labels` apply to every rule. The class shares that class balance keeps are the labeled
set's, or (`class_balance_prior="pool"`) the pool's, estimated from the teacher's probabilities by EM
([`estimate_class_prior`]).
"""

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np


# Whose class shares class balance keeps: the labeled set's, or the pool's as the teacher's pass estimates them.
CLASS_BALANCE_PRIORS = ("labeled", "pool")

# An adaptive threshold never drops to chance level (1 / num_labels, the lowest possible top probability): that would
# accept every row predicted as the class.
ADAPTIVE_FLOOR_MARGIN = 0.01


@dataclasses.dataclass
class Selection:
    """
    The rows a round keeps, and the thresholds that chose them.

    Attributes:
        selected (`np.ndarray` of `int64`):
            Row indices, most confident first.
        threshold (`float` or `None`):
            The round's confidence threshold: `confidence_threshold` for `"threshold"` and `"adaptive"`, the lowest
            accepted confidence for the rules without one (`"topk"`, `"entropy"`; `None` when nothing is kept).
        class_thresholds (`np.ndarray` of `float64`, *optional*):
            The per-class thresholds of `"adaptive"`.
        class_prior (`np.ndarray` of `float64`, *optional*):
            The pool's class shares estimated from the teacher's pass, when class balance kept them
            (`class_balance_prior="pool"`).
    """

    selected: np.ndarray
    threshold: float | None
    class_thresholds: np.ndarray | None = None
    class_prior: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class SelectionContext:
    """
    What a rule may use besides the labeling pass.

    Attributes:
        num_labels (`int`): the number of classes.
        round (`int`): the round (1-based: round 1 is the first with pseudo-labels).
        class_prior (`np.ndarray`, *optional*): the class shares the kept rows must have (`class_balance`), else `None`.
        config: the [`SemiSupervisedConfig`] (or any object with its selection fields): each rule reads its own.
    """

    num_labels: int
    round: int = 1
    class_prior: np.ndarray | None = None
    config: object = None


@dataclasses.dataclass(frozen=True)
class SelectionRule:
    """A registered rule: the function, and whether it needs every class's probability (not only the top one)."""

    select: Callable
    needs_distribution: bool = False


def select_by_threshold(predictions, context: SelectionContext) -> Selection:
    config = context.config
    selected = select_pseudo_labels(
        predictions.labels,
        predictions.confidences,
        config.confidence_threshold,
        context.class_prior,
        config.max_pseudo_labels,
    )
    return Selection(selected, config.confidence_threshold)


def select_adaptive(predictions, context: SelectionContext) -> Selection:
    config = context.config
    thresholds = adaptive_class_thresholds(
        predictions.labels, predictions.confidences, config.confidence_threshold, context.num_labels
    )
    selected = select_pseudo_labels(
        predictions.labels, predictions.confidences, thresholds, context.class_prior, config.max_pseudo_labels
    )
    return Selection(selected, config.confidence_threshold, thresholds)


def select_curriculum(predictions, context: SelectionContext) -> Selection:
    config = context.config
    selected = select_top_k(
        predictions.labels,
        predictions.confidences,
        config.pseudo_label_fraction,
        context.round,
        context.class_prior,
        config.max_pseudo_labels,
    )
    return Selection(selected, _lowest_confidence(predictions.confidences, selected))


def select_low_entropy(predictions, context: SelectionContext) -> Selection:
    """
    Rows whose normalized predictive entropy `H(p) / log(num_labels)` is at most `entropy_threshold`, most certain
    (lowest entropy) first, class-balanced and capped as [`select_pseudo_labels`]. With two classes it keeps the same
    rows as a confidence threshold; with more it also asks that the probability left over is not spread as doubt
    between several classes.
    """
    entropy = normalized_entropy(predictions.probabilities(context.num_labels))
    candidates = np.flatnonzero(entropy <= context.config.entropy_threshold)
    selected = _balanced_selection(
        candidates, predictions.labels, -entropy, context.class_prior, context.config.max_pseudo_labels
    )
    return Selection(selected, _lowest_confidence(predictions.confidences, selected))


SELECTION_RULES: dict[str, SelectionRule] = {
    "threshold": SelectionRule(select_by_threshold),
    "adaptive": SelectionRule(select_adaptive),
    "topk": SelectionRule(select_curriculum),
    "entropy": SelectionRule(select_low_entropy, needs_distribution=True),
}
# The names, in registry order (the config's choices).
SELECTION_STRATEGIES = tuple(SELECTION_RULES)


def apply_rule(strategy: str, predictions, context: SelectionContext) -> Selection:
    """The [`Selection`] of the rule registered as `strategy` (the config checks that it is one)."""
    return SELECTION_RULES[strategy].select(predictions, context)


def select(
    strategy: str,
    labels: np.ndarray,
    confidences: np.ndarray,
    *,
    num_labels: int,
    class_prior: np.ndarray | None = None,
    round_: int = 1,
    probabilities: np.ndarray | None = None,
    **settings,
) -> Selection:
    """
    [`apply_rule`] on bare arrays: `(labels, confidences)` and, for a rule that reads every class's probability
    (`"entropy"`), `probabilities` `(rows, num_labels)`; `settings` are the rules' config fields
    (`confidence_threshold`, `max_pseudo_labels`, `pseudo_label_fraction`, `entropy_threshold`), the others at their
    defaults.
    """
    from .config import SemiSupervisedConfig  # these import this module: read them when called
    from .pseudo_labeling import PseudoLabels

    if strategy not in SELECTION_RULES:
        raise ValueError(f"`selection_strategy` must be one of {tuple(SELECTION_RULES)}, got {strategy!r}.")
    fields = {f.name: f.default for f in dataclasses.fields(SemiSupervisedConfig)}
    names = ("confidence_threshold", "max_pseudo_labels", "pseudo_label_fraction", "entropy_threshold")
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise TypeError(f"select() got settings that no rule reads: {unknown}; the settings are {list(names)}.")
    config = SimpleNamespace(**{**{name: fields[name] for name in names}, **settings})
    labels, confidences = np.asarray(labels), np.asarray(confidences)
    if probabilities is not None:
        predictions = PseudoLabels.from_probabilities(labels, confidences, np.asarray(probabilities))
    elif SELECTION_RULES[strategy].needs_distribution:
        raise ValueError(f"`selection_strategy`={strategy!r} reads every class's probability: pass `probabilities`.")
    else:
        predictions = SimpleNamespace(labels=labels, confidences=confidences)
    context = SelectionContext(num_labels=num_labels, round=round_, class_prior=class_prior, config=config)
    return apply_rule(strategy, predictions, context)


# ---- The building blocks --------------------------------------------------------------------------------------------
def select_pseudo_labels(
    labels: np.ndarray,
    confidences: np.ndarray,
    threshold: float | np.ndarray,
    class_prior: np.ndarray | None = None,
    max_pseudo_labels: int | None = None,
) -> np.ndarray:
    """
    Row indices of the pseudo-labels to keep, most confident first.

    Only rows whose confidence reaches `threshold` (a number, or one per class, indexed by the row's label) are
    candidates. With a `class_prior` (class balancing), class `c` keeps its `floor(n * prior[c])` most confident
    candidates, where `n` is the largest total every class can fill (and at most `max_pseudo_labels`): the kept set has
    the labeled class proportions, and a class with no candidate means nothing is kept. Without it, the
    `max_pseudo_labels` most confident candidates are kept.
    """
    labels, confidences = np.asarray(labels), np.asarray(confidences)
    threshold = np.asarray(threshold, dtype=np.float64)
    row_thresholds = threshold[labels] if threshold.ndim else threshold
    candidates = np.flatnonzero(confidences >= row_thresholds)
    return _balanced_selection(candidates, labels, confidences, class_prior, max_pseudo_labels)


def adaptive_class_thresholds(
    labels: np.ndarray, confidences: np.ndarray, threshold: float, num_labels: int
) -> np.ndarray:
    r"""
    FlexMatch's per-class thresholds (Zhang et al., 2021), from one labeling pass.

    The learning status of class `c` is `sigma_c`, the number of rows predicted `c` with confidence >= `threshold`.
    Normalized as `beta_c = sigma_c / max(max_c sigma_c, number of rows below threshold)` (the max with the unconfident
    rows is FlexMatch's warm-up: while most of the pool is unconfident, every class's threshold stays low), it maps to
    `threshold_c = M(beta_c) * threshold` with the convex `M(x) = x / (2 - x)`: a well-learned class keeps about
    `threshold`, a class the model rarely predicts confidently gets a lower one, so more of its rows are kept. A
    threshold never falls below `1 / num_labels + ADAPTIVE_FLOOR_MARGIN`.

    Returns:
        `np.ndarray` of `float64`, shape `(num_labels,)`.
    """
    labels, confidences = np.asarray(labels), np.asarray(confidences)
    confident = confidences >= threshold
    sigma = np.bincount(labels[confident], minlength=num_labels).astype(np.float64)
    normalizer = max(sigma.max(initial=0.0), float((~confident).sum()))
    beta = sigma / normalizer if normalizer > 0 else np.zeros(num_labels)
    thresholds = beta / (2.0 - beta) * threshold
    return np.maximum(thresholds, 1.0 / num_labels + ADAPTIVE_FLOOR_MARGIN)


def select_top_k(
    labels: np.ndarray,
    confidences: np.ndarray,
    fraction: float,
    round_: int,
    class_prior: np.ndarray | None = None,
    max_pseudo_labels: int | None = None,
) -> np.ndarray:
    """
    Row indices of round `round_`'s (1-based) most confident pseudo-labels, most confident first, with no threshold.

    The round keeps `total = round(fraction * round_ * pool size)` rows, at most the pool and `max_pseudo_labels`, so
    the share grows each round (a curriculum). With a `class_prior`, class `c` keeps its `quota_c` most confident rows,
    `quota_c = total * prior[c]` rounded so that the quotas add up to `total` (largest remainders first). When the
    teacher predicts a class too rarely to fill its quota, `total` shrinks to the largest one every class can fill, as
    with the thresholds: the kept set always has the labeled class proportions, and a class never predicted means
    nothing is kept (a teacher that has collapsed onto one class does not feed it to its student). Without a
    `class_prior`, the `total` most confident rows are kept.
    """
    labels, confidences = np.asarray(labels), np.asarray(confidences)
    total = min(int(np.floor(fraction * round_ * len(labels) + 0.5)), len(labels))
    if max_pseudo_labels is not None:
        total = min(total, max_pseudo_labels)
    ranked = _best_first(np.arange(len(labels)), confidences)
    if class_prior is None:
        return ranked[:total]
    class_prior = _normalized(class_prior)
    counts = np.bincount(labels, minlength=len(class_prior))
    present = class_prior > 0
    total = min(total, int(np.floor(np.min(counts[present] / class_prior[present]) + 1e-9)))
    return _keep_per_class(ranked, labels, confidences, apportion(total, class_prior))


def normalized_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Each row's entropy divided by `log(num_labels)`: 0 for a certain prediction, 1 for the uniform one."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probabilities > 0, probabilities * np.log(probabilities), 0.0)
    return -terms.sum(axis=1) / np.log(probabilities.shape[1])


def apportion(total: int, shares: np.ndarray) -> np.ndarray:
    """`total * shares` rounded to integers that add up to `total`: floors, then +1 for the largest remainders."""
    exact = total * np.asarray(shares, dtype=np.float64)
    quotas = np.floor(exact + 1e-9).astype(np.int64)
    remainders = exact - quotas
    # Largest remainder first; ties go to the lower class index, so the result is deterministic.
    order = np.argsort(-remainders, kind="stable")
    quotas[order[: max(total - int(quotas.sum()), 0)]] += 1
    return quotas


def _balanced_selection(candidates, labels, scores, class_prior, max_pseudo_labels) -> np.ndarray:
    """
    The `candidates` to keep, highest `scores` first: with a `class_prior`, class `c` keeps its `floor(n * prior[c])`
    best candidates for the largest `n` every class can fill (at most `max_pseudo_labels`); without, the
    `max_pseudo_labels` best.
    """
    candidates = _best_first(candidates, scores)
    if class_prior is None:
        return candidates[:max_pseudo_labels] if max_pseudo_labels is not None else candidates
    class_prior = _normalized(class_prior)
    counts = np.bincount(labels[candidates], minlength=len(class_prior))
    present = class_prior > 0
    total = np.floor(np.min(counts[present] / class_prior[present]) + 1e-9)
    if max_pseudo_labels is not None:
        total = min(total, max_pseudo_labels)
    quotas = np.floor(total * class_prior + 1e-9).astype(np.int64)
    return _keep_per_class(candidates, labels, scores, quotas)


def _lowest_confidence(confidences: np.ndarray, selected: np.ndarray) -> float | None:
    return float(np.asarray(confidences)[selected].min()) if len(selected) else None


# EM re-estimation of the pool's class shares: stop when no share moves by more than this, or after this many steps.
PRIOR_TOLERANCE = 1e-6
PRIOR_MAX_STEPS = 1000
# Rows of the pool adjusted at a time (the pass's probabilities times the prior ratio, normalized).
PRIOR_CHUNK_ROWS = 1 << 20


def estimate_class_prior(probabilities: np.ndarray, train_prior) -> np.ndarray:
    """
    The pool's class shares, re-estimated by EM from the teacher's probabilities (Saerens, Latinne and Decaestecker,
    "Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation 14, 2002).

    The teacher's `probabilities` `(rows, classes)` are posteriors under the class shares it learned from
    (`train_prior`, the labeled set's). Under shares `pi` they become `p(c | x) * pi[c] / train_prior[c]`,
    renormalized; the estimate is the fixed point `pi[c] = mean over rows of those adjusted posteriors`, reached from
    `train_prior`. A pool with the labeled shares gives them back (up to the teacher's errors); a class the labeled
    set lacks stays at 0, and so does one estimated at less than half a row of the pool (EM drives the share of a class
    the teacher seldom predicts toward 0 without reaching it: left at 1e-70, it would ask the quotas for a class the
    teacher never predicts, and so keep nothing). Deterministic: a pure function of its inputs.
    """
    probabilities = np.asarray(probabilities)
    train_prior = _normalized(train_prior)
    if len(probabilities) == 0:
        return train_prior
    present = train_prior > 0
    prior = train_prior.copy()
    for _ in range(PRIOR_MAX_STEPS):
        ratio = np.where(present, prior / np.where(present, train_prior, 1.0), 0.0)
        total = np.zeros_like(prior)
        for start in range(0, len(probabilities), PRIOR_CHUNK_ROWS):
            adjusted = probabilities[start : start + PRIOR_CHUNK_ROWS].astype(np.float64) * ratio
            norms = adjusted.sum(axis=1, keepdims=True)
            total += (adjusted / np.where(norms > 0, norms, 1.0)).sum(axis=0)
        updated = total / len(probabilities)
        updated = updated / updated.sum() if updated.sum() > 0 else train_prior
        converged = np.max(np.abs(updated - prior)) <= PRIOR_TOLERANCE
        prior = updated
        if converged:
            break
    prior = np.where(prior * len(probabilities) < 0.5, 0.0, prior)
    return prior / prior.sum() if prior.sum() > 0 else train_prior


def _normalized(class_prior) -> np.ndarray:
    class_prior = np.asarray(class_prior, dtype=np.float64)
    return class_prior / class_prior.sum()


def _best_first(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    # Ties keep pool order, so the selection is deterministic.
    return rows[np.argsort(-scores[rows], kind="stable")]


def _keep_per_class(ranked: np.ndarray, labels: np.ndarray, scores: np.ndarray, quotas: np.ndarray) -> np.ndarray:
    """The first `quotas[c]` rows of each class `c` from `ranked` (best first), best first."""
    kept = [ranked[labels[ranked] == c][: quotas[c]] for c in range(len(quotas))]
    kept = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    return _best_first(kept, scores)


__all__ = [
    "ADAPTIVE_FLOOR_MARGIN",
    "SELECTION_RULES",
    "SELECTION_STRATEGIES",
    "Selection",
    "SelectionContext",
    "SelectionRule",
    "adaptive_class_thresholds",
    "apply_rule",
    "apportion",
    "normalized_entropy",
    "select",
    "select_pseudo_labels",
    "select_top_k",
]
