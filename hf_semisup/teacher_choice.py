"""
The first teacher chosen from the labeled data (`first_teacher="auto"`).

Which teacher labels round 1 best depends on the data: class prototypes in the pretrained embedding space (`"embeddings"`)
are strong where the pretrained space already groups the classes, the round-0 model (`"model"`) where a few labels
teach the task better than that space does. [`CrossFitTeacher`] measures it instead of assuming it: the labeled set is
split into [`FOLDS`] stratified folds; for each, prototypes from the other folds and a copy of the initial model trained
on them (as round 0 trains) score the held-out fold, and so does their mean distribution (`"combination"`). Each
class's held-out recall is weighted by its share of the pool, as the round-0 model's pass over the pool estimates it
(EM, `selection.estimate_class_prior`): the accuracy each teacher would have on the pool, which few-shot labeled sets,
balanced by construction, do not show. The candidate best by it (then by the true class's probability, weighted alike)
labels the pool, built from the whole labeled set. When the round-0 model is that candidate, no teacher labels better than the model
self-training would start from: the evidence says self-training would only feed it its own mistakes, so the run keeps
the round-0 model and stops ([`STOP`]).

What was chosen and why goes to the round's record (`first_teacher_choice`; `first_teacher_evidence`: each candidate's
held-out `accuracy`, `pool_accuracy` and `true_class_probability`; `first_teacher_pool_prior`), hence to the history
and the model card. The cross-fit costs [`FOLDS`] trainings of round 0's length on part of the labeled set, a pass over
the labeled set per candidate, and the round-0 model's pass over the pool (which the model and the mean reuse).
"""

import dataclasses

import numpy as np

from .embedding_teacher import PrototypeClassifier, class_prototypes, label_name_features
from .pseudo_labeling import PseudoLabels, predict_pool
from .selection import estimate_class_prior
from .state import copy_weights, load_weights


FOLDS = 2
CANDIDATES = ("embeddings", "model", "combination")
# The note a teacher leaves in `LabelingContext.notes` to end the run with the model it was given (no student).
STOP = "stop"


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Row indices of `folds` folds, each class's rows shuffled (by `seed`) and dealt out in turn."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in range(folds)]
    offset = 0
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        for i, row in enumerate(rows):
            parts[(offset + i) % folds].append(row)
        offset += len(rows)  # the next class starts where this one ended: folds stay the same size
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def held_out_scores(probabilities: np.ndarray, labels: np.ndarray, pool_prior=None) -> dict[str, float]:
    """
    How well `probabilities` `(rows, classes)` predict `labels`: `accuracy` over the rows, and, weighting each class by
    its share of the pool (`pool_prior`; the labeled shares when `None`), `pool_accuracy` (the accuracy the teacher
    would have on rows drawn as the pool is: each class's recall, weighted) and `true_class_probability` (the mean
    probability given to the true class, weighted alike). Few-shot labeled sets are balanced where pools seldom are:
    a teacher that is right on the rare classes and wrong on the common one labels a skewed pool badly.
    """
    num_labels = probabilities.shape[1]
    counts = np.bincount(labels, minlength=num_labels)
    prior = counts / counts.sum() if pool_prior is None else np.asarray(pool_prior, dtype=np.float64)
    present = counts > 0
    prior = np.where(present, prior, 0.0)
    prior = prior / prior.sum()
    correct = probabilities.argmax(axis=1) == labels
    true_probability = probabilities[np.arange(len(labels)), labels]
    recall = np.bincount(labels, weights=correct, minlength=num_labels) / np.maximum(counts, 1)
    mean_true = np.bincount(labels, weights=true_probability, minlength=num_labels) / np.maximum(counts, 1)
    return {
        "accuracy": float(np.mean(correct)),
        "pool_accuracy": float(np.sum(prior * recall)),
        "true_class_probability": float(np.sum(prior * mean_true)),
    }


def choose(evidence: dict[str, dict[str, float]]) -> str:
    """
    The best candidate: highest `pool_accuracy`, then `true_class_probability`, then the order of [`CANDIDATES`].
    """
    names = [name for name in CANDIDATES if name in evidence]
    return max(
        names, key=lambda n: (evidence[n]["pool_accuracy"], evidence[n]["true_class_probability"], -names.index(n))
    )


class CrossFitTeacher:
    """Chooses round 1's teacher by cross-fitting on the labeled set (see the module's docstring)."""

    needs_initial_weights = True

    def label(self, context) -> PseudoLabels:
        model, config = context.model, context.config
        num_labels = model.config.num_labels
        labels = np.asarray(context.labeled["labels"], dtype=np.int64)
        names = label_name_features(config.label_name_template, model.config.id2label, context.tokenizer)
        folds = stratified_folds(labels, FOLDS, config.seed)
        held_out = {name: np.zeros((len(labels), num_labels), dtype=np.float64) for name in CANDIDATES[:2]}
        trained = copy_weights(model)
        try:
            for fold in folds:
                rest = np.setdiff1d(np.arange(len(labels)), fold)
                fit_on, score_on = context.labeled.select(rest), context.labeled.select(fold)
                load_weights(model, context.initial_weights)
                prototypes = class_prototypes(
                    model, fit_on, context.collator, context.accelerator, context.batch_size, num_labels=num_labels,
                    name_features=names, disable_tqdm=True,
                )  # fmt: skip
                held_out["embeddings"][fold] = self.distribution(
                    context, PrototypeClassifier(model, prototypes), score_on
                )
                fold_model = context.fit(fit_on)
                held_out["model"][fold] = self.distribution(context, fold_model, score_on)
                del fold_model
        finally:
            load_weights(model, trained)
        held_out["combination"] = (held_out["embeddings"] + held_out["model"]) / 2
        # The pool's class shares, as the round-0 model's pass over it estimates them (EM, from the labeled shares).
        model_pass = context.predict(model, num_labels, "round-0 model")
        pool_prior = estimate_class_prior(
            model_pass.probabilities(num_labels), np.bincount(labels, minlength=num_labels)
        )
        evidence = {name: held_out_scores(p, labels, pool_prior) for name, p in held_out.items()}
        choice = choose(evidence)
        context.notes.update(
            first_teacher_choice=choice,
            first_teacher_evidence=evidence,
            first_teacher_pool_prior={str(model.config.id2label[c]): float(p) for c, p in enumerate(pool_prior)},
        )
        if choice == "model":
            context.notes[STOP] = "first_teacher_evidence"
            return model_pass
        return self.pool_pass(context, choice, model_pass)

    @staticmethod
    def distribution(context, model, dataset) -> np.ndarray:
        """`model`'s full distribution for every row of `dataset`, in order."""
        num_labels = context.model.config.num_labels
        return predict_pool(
            model, dataset, context.collator, context.accelerator, context.batch_size, top_k=num_labels,
            disable_tqdm=True,
        ).probabilities(num_labels)  # fmt: skip

    @staticmethod
    def pool_pass(context, choice: str, model_pass: PseudoLabels) -> PseudoLabels:
        """The chosen teacher's pass over the pool, built from the whole labeled set (`model_pass`: the model's)."""
        from .teachers import PrototypeTeacher  # teachers.py registers this class

        if choice == "embeddings":
            return PrototypeTeacher().label(context)
        num_labels = context.model.config.num_labels
        full = dataclasses.replace(context, top_k=num_labels)
        prototypes = PrototypeTeacher().label(full).probabilities(num_labels)
        mean = (prototypes + model_pass.probabilities(num_labels)) / 2
        labels = mean.argmax(axis=1)
        return PseudoLabels.from_probabilities(labels, mean[np.arange(len(mean)), labels].astype(np.float32), mean)
