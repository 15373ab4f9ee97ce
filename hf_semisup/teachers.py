"""
Who labels the pool each round.

A teacher is an object with `label(context) -> PseudoLabels`: given a [`LabelingContext`] (the model, the datasets, the
round, the selection rule), it returns its prediction for every pool row, in pool order, identical on every process.
[`TEACHERS`] maps the `first_teacher` names to teacher classes (or any callable that returns a teacher): round 1 is
labeled by the one `first_teacher` names, every later round by `"model"`, the student of the round before. A new
teacher is a class and a line in the registry ([`register_teacher`]).

- `"model"` ([`ModelTeacher`]): the trainer's current model.
- `"embeddings"` ([`PrototypeTeacher`]): class prototypes in the initial (pretrained) encoder's embedding space (see
  `embedding_teacher.py`).
- `"auto"` ([`~teacher_choice.CrossFitTeacher`]): the prototypes, the round-0 model or their mean, as cross-fitting
  on the labeled set ranks them; the round-0 model ends the run (see `teacher_choice.py`).
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from .embedding_teacher import PrototypeClassifier, class_prototypes, label_name_features, refined_pool_labels
from .pseudo_labeling import PseudoLabels, predict_pool
from .state import copy_weights, load_weights
from .teacher_choice import CrossFitTeacher


@dataclasses.dataclass
class LabelingContext:
    """
    What a teacher may use to label round `round`'s pool.

    Attributes:
        round (`int`): the round (>= 1).
        model: the trainer's model, unwrapped and on its device; a teacher that changes its weights restores them.
        pool: the tokenized unlabeled set (a `Dataset` or an `IterableDataset`).
        pool_source: the unlabeled set as given (raw text, when it was), row for row as `pool`.
        labeled: the tokenized labeled set, with integer `labels`.
        accelerator: the trainer's [`~accelerate.Accelerator`] (process layout, device, autocast).
        collator: pads lists of features into batches.
        batch_size (`int`): rows per forward pass on each process.
        top_k (`int`): the classes per row the returned pass must keep beside the argmax (see `PseudoLabels`).
        selection_top_k (`int`): what a pass that the selection rule reads must keep (`select` below).
        select: the round's selection rule, `select(predictions) -> Selection` (e.g. to refine a teacher).
        initial_weights: the model's weights before training (`None` unless a teacher asked for them).
        tokenizer: the trainer's `processing_class`.
        config: the [`SemiSupervisedConfig`].
        fit: `fit(labeled_subset) -> model`: a copy of the model from its initial weights, trained on a subset of the
            labeled set as round 0 trains (the trainer's model and state are left alone), for teachers that cross-fit.
        notes (`dict`): what the teacher adds to the round's record (what it chose, and why); `notes["stop"]`, a
            reason, ends the run with the model the teacher was given.
    """

    round: int
    model: object
    pool: object
    pool_source: object
    labeled: object
    accelerator: object
    collator: Callable
    batch_size: int
    top_k: int
    selection_top_k: int
    select: Callable
    initial_weights: dict | None
    tokenizer: object
    config: object
    fit: Callable | None = None
    notes: dict = dataclasses.field(default_factory=dict)

    def predict(self, model, top_k: int, what: str | None = None) -> PseudoLabels:
        """`model`'s labeling pass over the pool, with this round's progress bar."""
        return predict_pool(
            model,
            self.pool,
            self.collator,
            self.accelerator,
            self.batch_size,
            top_k=top_k,
            desc=f"Pseudo-labeling (round {self.round}{', ' + what if what else ''})",
            disable_tqdm=self.config.disable_tqdm,
        )


class Teacher:
    """The teacher interface. `needs_initial_weights`: the trainer keeps the pretrained weights for it."""

    needs_initial_weights = False

    def label(self, context: LabelingContext) -> PseudoLabels:
        raise NotImplementedError


class ModelTeacher(Teacher):
    """The current model: the round-0 fit in round 1 (`first_teacher="model"`), the last student later."""

    def label(self, context: LabelingContext) -> PseudoLabels:
        return context.predict(context.model, context.top_k)


class PrototypeTeacher(Teacher):
    """
    The initial encoder's class prototypes (`first_teacher="embeddings"`): each text goes to the class whose prototype
    is nearest its mean-pooled embedding. `prototype_refinement_steps` times, the prototypes are re-estimated with the
    pool rows the round's selection rule keeps.
    """

    needs_initial_weights = True

    def label(self, context: LabelingContext) -> PseudoLabels:
        model, config = context.model, context.config
        trained = copy_weights(model)
        load_weights(model, context.initial_weights)
        try:
            names = label_name_features(config.label_name_template, model.config.id2label, context.tokenizer)
            prototypes = self.prototypes(context, names)
            for step in range(config.prototype_refinement_steps):
                scored = PrototypeClassifier(model, prototypes)
                predictions = context.predict(scored, context.selection_top_k, f"refinement {step + 1}")
                selected = context.select(predictions).selected
                prototypes = self.prototypes(context, names, refined_pool_labels(predictions, selected))
            return context.predict(PrototypeClassifier(model, prototypes), context.top_k, "class prototypes")
        finally:
            load_weights(model, trained)

    @staticmethod
    def prototypes(context: LabelingContext, name_features, pool_labels: np.ndarray | None = None):
        """The class prototypes from the labeled set and, given `pool_labels`, the pool rows it assigns a class."""
        return class_prototypes(
            context.model,
            context.labeled,
            context.collator,
            context.accelerator,
            context.batch_size,
            num_labels=context.model.config.num_labels,
            name_features=name_features,
            pool=None if pool_labels is None else context.pool,
            pool_labels=pool_labels,
            disable_tqdm=context.config.disable_tqdm,
        )


TEACHERS: dict[str, Callable[[], Teacher]] = {
    "model": ModelTeacher,
    "embeddings": PrototypeTeacher,
    "auto": CrossFitTeacher,
}


def register_teacher(name: str, factory: Callable[[], Teacher]):
    """Make `first_teacher=name` label round 1 with `factory()` (a `Teacher` class, or a function returning one)."""
    TEACHERS[name] = factory


def teacher_name(first_teacher: str, round_: int) -> str:
    """The registered teacher that labels round `round_`."""
    return first_teacher if round_ == 1 else "model"


def teacher_for_round(first_teacher: str, round_: int) -> Teacher:
    """A new teacher for round `round_` (the config checks that `first_teacher` is registered)."""
    return TEACHERS[teacher_name(first_teacher, round_)]()


def needs_initial_weights(first_teacher: str) -> bool:
    """Whether round 1's teacher starts from the initial weights (later rounds' teacher is the model)."""
    if first_teacher not in TEACHERS:
        return False
    factory = TEACHERS[first_teacher]
    flag = getattr(factory, "needs_initial_weights", None)  # a class says it without being built
    return bool(flag if flag is not None else getattr(factory(), "needs_initial_weights", False))


def check_teacher_output(predictions, pool, top_k: int, round_: int):
    """A teacher's pass covers the pool, row for row, with the classes per row it was asked for."""
    rows = len(pool) if hasattr(pool, "__len__") else None
    if rows is not None and len(predictions) != rows:
        raise ValueError(f"Round {round_}'s teacher labeled {len(predictions)} rows of a pool of {rows}.")
    if predictions.num_classes_kept < top_k:
        raise ValueError(
            f"Round {round_}'s teacher kept {predictions.num_classes_kept} classes per row; the round needs {top_k}."
        )
