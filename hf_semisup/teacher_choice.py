"""
The first teacher chosen from the labeled data (`first_teacher="auto"`).

Which teacher labels round 1 best depends on the data: class prototypes in the pretrained embedding space (`"embeddings"`)
are strong where the pretrained space already groups the classes, the round-0 model (`"model"`) where a few labels
teach the task better than that space does. [`CrossFitTeacher`] measures it instead of assuming it: the labeled set is
split into [`FOLDS`] stratified folds; for each, prototypes from the other folds and a copy of the initial model trained
on them (as round 0 trains) score the held-out fold, and so does their mean distribution (`"combination"`). The
candidate whose held-out predictions are best (accuracy, then the mean probability of the true class) labels the pool,
built from the whole labeled set. When the round-0 model is that candidate, no teacher labels better than the model
self-training would start from: the evidence says self-training would only feed it its own mistakes, so the run keeps
the round-0 model and stops ([`STOP`]).

The held-out accuracy is the labeled set's own, not reweighted to the pool's class shares. Weighting each class's recall
by the shares that EM (`selection.estimate_class_prior`) reads from the round-0 model's pass over the pool was tried
and measured worse (`benchmarks/label_efficiency.py --data <trec or reuters> --budgets 8 --seeds 0 --pool-size 4000
--systems auto-teacher`): a model fine-tuned on a few labels is overconfident, its estimate leans on one or two classes, and the weighted
evidence then scores those classes only. On TREC it chose the round-0 model (0.458 test accuracy, against 0.572 for
the combination the unweighted evidence chooses); on Reuters it tied the prototypes and the combination at 1.0.

What was chosen and why goes to the round's record (`first_teacher_choice`, `first_teacher_evidence`: the candidates'
held-out accuracy and mean true-class probability), hence to the history and the model card. The cross-fit costs
[`FOLDS`] trainings of round 0's length on part of the labeled set, and a pass over it per candidate.
"""

import dataclasses

import numpy as np

from .embedding_teacher import PrototypeClassifier, class_prototypes, label_name_features
from .pseudo_labeling import PseudoLabels, predict_pool
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


def held_out_scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and mean probability of the true class of `probabilities` `(rows, classes)` against `labels`."""
    return {
        "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)),
        "true_class_probability": float(np.mean(probabilities[np.arange(len(labels)), labels])),
    }


def choose(evidence: dict[str, dict[str, float]]) -> str:
    """The best candidate: highest held-out accuracy, then true-class probability, then the order of [`CANDIDATES`]."""
    names = [name for name in CANDIDATES if name in evidence]
    return max(names, key=lambda n: (evidence[n]["accuracy"], evidence[n]["true_class_probability"], -names.index(n)))


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
        evidence = {name: held_out_scores(probabilities, labels) for name, probabilities in held_out.items()}
        choice = choose(evidence)
        context.notes.update(first_teacher_choice=choice, first_teacher_evidence=evidence)
        if choice == "model":
            context.notes[STOP] = "first_teacher_evidence"
            return context.predict(model, context.top_k)
        return self.pool_pass(context, choice)

    @staticmethod
    def distribution(context, model, dataset) -> np.ndarray:
        """`model`'s full distribution for every row of `dataset`, in order."""
        num_labels = context.model.config.num_labels
        return predict_pool(
            model, dataset, context.collator, context.accelerator, context.batch_size, top_k=num_labels,
            disable_tqdm=True,
        ).probabilities(num_labels)  # fmt: skip

    @staticmethod
    def pool_pass(context, choice: str) -> PseudoLabels:
        """The chosen teacher's pass over the pool, built from the whole labeled set."""
        from .teachers import PrototypeTeacher  # teachers.py registers this class

        if choice == "embeddings":
            return PrototypeTeacher().label(context)
        num_labels = context.model.config.num_labels
        full = dataclasses.replace(context, top_k=num_labels)
        prototypes = PrototypeTeacher().label(full).probabilities(num_labels)
        model = context.predict(context.model, num_labels, "round-0 model").probabilities(num_labels)
        mean = (prototypes + model) / 2
        labels = mean.argmax(axis=1)
        return PseudoLabels.from_probabilities(labels, mean[np.arange(len(mean)), labels].astype(np.float32), mean)
