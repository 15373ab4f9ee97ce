from dataclasses import dataclass, field

from transformers import TrainingArguments


STUDENT_INITS = ("continue", "reset")


@dataclass
class SemiSupervisedConfig(TrainingArguments):
    r"""
    Configuration for [`SemiSupervisedTrainer`]: every [`~transformers.TrainingArguments`] field, plus the ones below.

    Training runs in rounds. Round 0 fits the model on the labeled set. Each later round, the current model (the
    teacher) labels the unlabeled pool, the confident predictions are kept, and a student trains on labeled +
    pseudo-labeled data and becomes the next teacher.

    Parameters:
        > Self-training

        self_training_rounds (`int`, *optional*, defaults to `2`):
            Number of pseudo-labeling rounds after the first supervised fit. `0` is plain fine-tuning.
        student_init (`str`, *optional*, defaults to `"reset"`):
            Where each round's student starts: `"reset"` restarts from the initial weights (Noisy Student, STraTA),
            which keeps a teacher's mistakes from compounding in the weights; `"continue"` fine-tunes the teacher.

        > Selection

        confidence_threshold (`float`, *optional*, defaults to `0.9`):
            A pseudo-label is kept only if the teacher's top softmax probability reaches this value. Must be in
            (0, 1).
        class_balance (`bool`, *optional*, defaults to `True`):
            Keep the accepted pseudo-labels' class proportions at the labeled set's class prior: the most confident
            predictions of each class are kept up to that class's quota, so no round floods the training set with
            the majority class.
        max_pseudo_labels (`int` or `None`, *optional*, defaults to `None`):
            Largest number of pseudo-labels accepted per round (the most confident ones). `None` means no cap.

        > Guard rails

        collapse_alarm_margin (`float` or `None`, *optional*, defaults to `0.3`):
            Warn, and mark the round `collapse_alarm: true` in the history, when a class's share of the round's
            accepted pseudo-labels exceeds its share of the labeled set by more than this (with a 50/50 labeled set and
            `0.3`: more than 80% of one class). It cannot fire with `class_balance=True`, which keeps the labeled
            shares. `None` disables the alarm. Must be in (0, 1).
        rollback_on_worse_eval (`bool`, *optional*, defaults to `False`):
            After each round, compare the eval metric (`metric_for_best_model`, by default the eval loss) with the
            previous round's: if it got worse, go back to the previous round's model and stop. Needs an
            `eval_dataset`.

        > Data

        text_column (`str`, *optional*, defaults to `"text"`):
            Column holding the input text in raw (not yet tokenized) datasets.
        label_column (`str`, *optional*, defaults to `"label"`):
            Column holding the labels: ints, or class names mapped through `model.config.label2id`. In the unlabeled
            dataset it is never trained on, only used to report `pseudo_label_accuracy`.
        max_length (`int` or `None`, *optional*, defaults to `256`):
            Texts are truncated to this many tokens. `None` uses the tokenizer's `model_max_length`.
    """

    # Self-training
    self_training_rounds: int = field(
        default=2,
        metadata={"help": "Number of pseudo-labeling rounds after the first supervised fit. 0 is plain fine-tuning."},
    )
    student_init: str = field(
        default="reset",
        metadata={
            "help": "Where each round's student starts: 'reset' (the initial weights, as Noisy Student / STraTA do) "
            "or 'continue' (fine-tune the teacher).",
            "choices": list(STUDENT_INITS),
        },
    )

    # Selection
    confidence_threshold: float = field(
        default=0.9,
        metadata={"help": "Keep a pseudo-label only if the teacher's top probability reaches this value, in (0, 1)."},
    )
    class_balance: bool = field(
        default=True,
        metadata={
            "help": "Keep the accepted pseudo-labels' class proportions at the labeled class prior, so no round "
            "floods the training set with the majority class."
        },
    )
    max_pseudo_labels: int | None = field(
        default=None,
        metadata={"help": "Largest number of pseudo-labels accepted per round (the most confident). None: no cap."},
    )

    # Guard rails
    collapse_alarm_margin: float | None = field(
        default=0.3,
        metadata={
            "help": "Warn and flag the round when a class's share of its accepted pseudo-labels exceeds its labeled "
            "share by more than this, in (0, 1). None: no alarm."
        },
    )
    rollback_on_worse_eval: bool = field(
        default=False,
        metadata={
            "help": "When a round makes the eval metric (metric_for_best_model, default the loss) worse than the "
            "previous round, go back to the previous round's model and stop. Needs an eval_dataset."
        },
    )

    # Data
    text_column: str = field(default="text", metadata={"help": "Column holding the input text."})
    label_column: str = field(
        default="label",
        metadata={"help": "Column holding the labels (ints or class names). Never trained on in the unlabeled set."},
    )
    max_length: int | None = field(
        default=256,
        metadata={"help": "Truncate texts to this many tokens. None: the tokenizer's model_max_length."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.self_training_rounds, int) or self.self_training_rounds < 0:
            raise ValueError(f"`self_training_rounds` must be an integer >= 0, got {self.self_training_rounds!r}.")
        if not 0.0 < self.confidence_threshold < 1.0:
            raise ValueError(
                f"`confidence_threshold` must be in the open interval (0, 1), got {self.confidence_threshold!r}."
            )
        if self.max_pseudo_labels is not None and self.max_pseudo_labels < 1:
            raise ValueError(f"`max_pseudo_labels` must be None or an integer >= 1, got {self.max_pseudo_labels!r}.")
        if self.student_init not in STUDENT_INITS:
            raise ValueError(f"`student_init` must be one of {STUDENT_INITS}, got {self.student_init!r}.")
        if self.collapse_alarm_margin is not None and not 0.0 < self.collapse_alarm_margin < 1.0:
            raise ValueError(
                f"`collapse_alarm_margin` must be None or in the open interval (0, 1), got {self.collapse_alarm_margin!r}."
            )
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"`max_length` must be None or an integer >= 2, got {self.max_length!r}.")
