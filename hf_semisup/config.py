import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from transformers import TrainingArguments

from .augment import AUGMENTATIONS
from .consistency import DIVERGENCES
from .selection import CLASS_BALANCE_PRIORS, SELECTION_RULES
from .teachers import TEACHERS
from .validation import Boolean, Integer, Options, Real, Template, check_constraints


logger = logging.getLogger(__name__)

STUDENT_INITS = ("continue", "reset")
TOKEN_DROPOUT_MODES = ("mask", "delete")
# Lambda of the consistency loss when `consistency_weight` is unset and the pool allows it (see the docstring).
DEFAULT_CONSISTENCY_WEIGHT = 1.0
# `from_pretrained` arguments the trainer derives from the labeled set.
MODEL_LABEL_KWARGS = {"num_labels", "id2label", "label2id"}


@dataclass
class SemiSupervisedConfig(TrainingArguments):
    r"""
    Configuration for [`SemiSupervisedTrainer`]: every [`~transformers.TrainingArguments`] field, plus the ones below.

    Training runs in rounds. Round 0 fits the model on the labeled set. Each later round, a teacher labels the unlabeled
    pool, a selection rule keeps the confident predictions, and a student trains on labeled + pseudo-labeled data and
    becomes the next teacher. With `consistency_weight > 0`, every training step also pulls the model's prediction on a
    token-dropped copy of unlabeled texts toward its prediction on the clean text (UDA-style), in every round.

    The defaults are what the label-efficiency benchmark chose (`benchmarks/label_efficiency.py`; movie snippets and
    subjectivity, 8 and 32 labels per class, seeds 0 to 5, MiniLM-L6): each field below says which runs chose it, and
    `benchmarks/README.md` has their figures.

    Parameters:
        > Self-training

        self_training_rounds (`int`, *optional*, defaults to `2`):
            Pseudo-labeling rounds after the first supervised fit; `0` is plain fine-tuning. One round ended lower on
            every seed at 8 and 32 labels per class (0.694 against 0.700, 0.701 against 0.709), a third level (0.699)
            in 1.6 times the time.
        student_init (`str`, *optional*, defaults to `"reset"`):
            Where each round's student starts: `"reset"` from the initial weights (Noisy Student, STraTA), so a
            teacher's mistakes do not compound in the weights; `"continue"` fine-tunes the teacher (0.690 against
            0.700).
        student_epochs (`float` or `None`, *optional*, defaults to `1.0`):
            Epochs each student (rounds 1, 2, ...) trains, still at least `min_steps_per_round` steps; round 0 trains
            `num_train_epochs`. `None` (`none` on the command line): `num_train_epochs` in every round. One epoch:
            pseudo-labels are noisy, and a network fits the right ones first; a student trained three epochs is also
            near-certain on most of the pool, which blunts the next round's ranking (see the Selection note).
        min_steps_per_round (`int`, *optional*, defaults to `100`):
            A round trains its epochs, or this many optimizer steps when those are fewer: 16 labels and 3 epochs are 6
            steps, too few for a teacher (`--quick`: 6 steps 0.476, 60 steps 0.567, 100 steps 0.588, 240 steps 0.591).
            `max_steps > 0` overrides it; `0` turns it off. A run with `self_training_rounds=0` trains exactly what
            `TrainingArguments` says, as `Trainer` does.
        first_teacher (`str`, *optional*, defaults to `"embeddings"`):
            Who labels round 1 (later rounds: the last student), by name in `teachers.TEACHERS`:

            - `"model"`: the model fine-tuned in round 0 on the labeled set.
            - `"embeddings"`: class prototypes in the initial encoder's mean-pooled embedding space (each class's mean
              labeled embedding, plus the embedding of `label_name_template` with the class name; cosine similarity).
              A model fine-tuned on a few labels is a weak, overconfident teacher; the pretrained space already groups
              texts of a class (see `embedding_teacher.py`).
            - `"auto"`: chosen from the labeled set by cross-fitting (see `teacher_choice.py`): on each of 2 folds, the
              prototypes and a copy of the initial model trained on the other fold for round 0's length score the
              held-out fold, and so does their mean; the best labels round 1 (the mean: both teachers' distributions
              averaged). When the round-0 model is best, no teacher beats the model self-training starts from, and
              the run ends with it. The history's round 1 says what was chosen and why (`first_teacher_choice`,
              `first_teacher_evidence`). It costs 2 trainings of round 0's length on half the labels.
        label_name_template (`str` or `None`, *optional*, defaults to `"This sentence is {}."`):
            With `first_teacher="embeddings"`, a prompt with `{}` for the class name whose embedding joins each class's
            prototype, as SetFit's templated examples do. Skipped, with an info log, for class names that are numbers
            or `LABEL_<i>`; `None` never uses the names.
        prototype_refinement_steps (`int`, *optional*, defaults to `1`):
            With `first_teacher="embeddings"`, times the prototypes are re-estimated before they label round 1, with
            the pool rows the round's selection keeps (a k-means step). Each step costs a pass over the pool. One step
            raised round 1's pseudo-label accuracy on every seed of both data sets at 8 per class (0.790 against
            0.748, 0.969 against 0.942) and the result (0.700 against 0.682); at 32 per class it ended 1 point lower,
            within the seed spread.

        > Selection

        confidence_threshold (`float`, *optional*, defaults to `0.9`):
            With `selection_strategy` `"threshold"` or `"adaptive"`: the teacher's top probability a kept pseudo-label
            reaches, in (0, 1).
        class_balance (`bool`, *optional*, defaults to `True`):
            Keep the accepted pseudo-labels at the labeled set's class proportions: each class keeps its most
            confident predictions up to its quota. When the teacher predicts a class too rarely, every quota shrinks
            with it; a teacher that predicts one class only gets nothing accepted.
        class_balance_prior (`str`, *optional*, defaults to `"labeled"`):
            The class shares that `class_balance` keeps: `"labeled"`, the labeled set's; `"pool"`, the pool's,
            estimated each round from the teacher's probabilities by EM (Saerens et al., 2002; see
            `selection.estimate_class_prior`), starting from the labeled shares, and recorded in the history as
            `pool_class_prior`. Few-shot labeled sets are balanced by construction (k per class) where pools seldom
            are: `"pool"` lets the quotas follow the pool. The pass then keeps every class's probability. Not the
            default: the estimate is only as good as the teacher's calibration, and it feeds on itself. On Reuters
            (7 topics, `earn` 74% of the pool; 8 per class, seed 0; round 1 labeled by the prototypes) round 1's
            estimate was close (`earn` 0.78) and its 1,509 pseudo-labels 99.7% right, but from the student trained
            on them, round 2's estimate left 4 of the 7 topics under half a row of the pool, round 2 kept none of
            them, and the run ended at 0.806 test accuracy and 0.302 macro-F1; the defaults, with the labeled
            shares, end at 0.905 and 0.773.
        max_pseudo_labels (`int` or `None`, *optional*, defaults to `None`):
            Most pseudo-labels accepted per round (the most confident). `None`: no cap.
        selection_strategy (`str`, *optional*, defaults to `"topk"`):
            The rule that chooses a round's pseudo-labels, by name in `selection.SELECTION_RULES`:

            - `"threshold"`: rows whose confidence reaches `confidence_threshold`.
            - `"adaptive"`: FlexMatch's per-class thresholds: with `sigma_c` the rows predicted `c` at or above
              `confidence_threshold`, `beta_c = sigma_c / max(max_c sigma_c, unconfident rows)`, the threshold of `c`
              is `beta_c / (2 - beta_c) * confidence_threshold`, at least `1 / num_labels + 0.01` (recorded as the
              history's `class_thresholds`).
            - `"topk"`: no threshold: round `r` keeps the most confident `pseudo_label_fraction * r` of the pool (a
              curriculum).
            - `"entropy"`: rows whose predictive entropy over all classes, divided by `log(num_labels)` (0: certain, 1:
              uniform), is at most `entropy_threshold`, the most certain first. With two classes it keeps what a
              confidence threshold keeps; with more, a row whose leftover probability is spread over several classes
              is less certain than one that hesitates between two.

            `class_balance` and `max_pseudo_labels` apply to every rule; for `"topk"` and `"entropy"` the history's
            `threshold` is the lowest accepted confidence.
        pseudo_label_fraction (`float`, *optional*, defaults to `0.4`):
            With `"topk"`, the share of the pool each round adds: round `r` keeps `min(1, fraction * r)`, in (0, 1].
        entropy_threshold (`float`, *optional*, defaults to `0.5`):
            With `"entropy"`, the largest normalized entropy a kept pseudo-label may have, in (0, 1]. With two classes,
            `0.5` keeps rows whose top probability is at least 0.89 (about `confidence_threshold`'s 0.9); not tuned.
        soft_pseudo_labels (`bool`, *optional*, defaults to `False`):
            Train each selected row on the teacher's whole distribution (cross-entropy against the soft target),
            weighted by its confidence, instead of its argmax class; labeled rows keep one-hot targets of weight 1.
            It ended level (0.693 against 0.700).

        Why these: with the round-0 model as first teacher and the 0.9 threshold (the first defaults), self-training
        scored below supervised-only (0.540 against 0.553): fit on 16 labels, that teacher labels the pool at 0.58 and
        is overconfident, and no rule fixed it. The prototypes label it at 0.635, their most confident fifth at 0.791.
        Top-k goes with them: their scores are scaled cosine similarities, not calibrated probabilities, so a fixed
        threshold would keep a different share on every data set, where a share of the ranked pool adapts. The share
        (0.4) and one-epoch students were set together: a fifth per round with three-epoch students left subjectivity's
        seed 0 below supervised-only (0.868 against 0.872); each alone scores lower on both sets. For an encoder not
        trained for sentence embeddings (these were measured with all-MiniLM-L6-v2), compare with
        `first_teacher="model"` on validation data.

        > Consistency

        consistency_weight (`float` or `None`, *optional*, defaults to `None`):
            Lambda of the consistency loss; `0` turns it off and costs nothing. `None`: the trainer chooses
            [`DEFAULT_CONSISTENCY_WEIGHT`] (1.0) when the pool is a `datasets.Dataset`, the tokenizer can pad, there is
            no `compute_loss_func` and there are at least 2 classes, else `0`, and writes its choice back into the
            config (a trainer built later with it chooses again). Lambda 1 on top of self-training was ahead at 8 per
            class on 11 of 12 runs (seeds 0 to 5, two data sets: 0.712 against 0.707, 0.889 against 0.879); lambda 3
            ended lower (0.690). It about doubles a run's time; alone (`self_training_rounds=0`) it is level with
            supervised-only.
        consistency_augmentation (`str`, *optional*, defaults to `"token_dropout"`):
            How the noised copy of an unlabeled text is made, by name in `augment.AUGMENTATIONS`: `"token_dropout"`
            drops or masks tokens (the two fields below).
        token_dropout (`float`, *optional*, defaults to `0.15`):
            Chance that each token of an unlabeled text is dropped, in [0, 1); special tokens never are.
        token_dropout_mode (`str`, *optional*, defaults to `"mask"`):
            `"mask"` replaces a dropped token by the mask token (the unknown token when there is none); `"delete"`
            removes it and re-pads.
        consistency_loss (`str`, *optional*, defaults to `"kl"`):
            `"kl"` (KL(target || prediction)) or `"mse"` (between the probability vectors), in float32.
        consistency_temperature (`float`, *optional*, defaults to `1.0`):
            The clean-text target is `softmax(logits / temperature)`; below 1 sharpens it (UDA: 0.4, which scored
            0.700 against 0.708 with the neutral settings).
        consistency_confidence (`float`, *optional*, defaults to `0.0`):
            Only unlabeled examples whose clean-text top probability reaches this contribute, in [0, 1].
        consistency_rampup_steps (`int`, *optional*, defaults to `0`):
            Lambda rises linearly from 0 over this many optimizer steps of each round.
        unlabeled_batch_ratio (`float`, *optional*, defaults to `1.0`):
            mu: unlabeled examples per labeled example in a step, per device (`round(mu * batch size)`, at least 1).

        > Pseudo-labeling pass

        pseudo_label_top_k (`int`, *optional*, defaults to `0`):
            Also keep each row's `k` most probable classes and their probabilities, in
            [`SemiSupervisedTrainer.pseudo_label`] and the per-round files. `0`: the argmax class only.
        save_pseudo_labels (`bool`, *optional*, defaults to `True`):
            Write each round's pass (every pool row's index, pseudo-label, confidence, top-k, and whether it was kept)
            to `<output_dir>/pseudo_labels/round-{r}.parquet`, from the main process.

        > Guard rails

        collapse_alarm_margin (`float` or `None`, *optional*, defaults to `0.3`):
            Warn, and mark the round `collapse_alarm: true`, when a class's share of the accepted pseudo-labels exceeds
            its labeled share by more than this, in (0, 1) (with 50/50 labels and 0.3: over 80% of one class).
            `class_balance=True` with the labeled shares prevents it but for rounding. `None`: no alarm.
        rollback_on_worse_eval (`bool`, *optional*, defaults to `False`):
            When a round makes the eval metric (`metric_for_best_model`, default the loss) worse than the round
            before, go back to that round's model and stop; needs an `eval_dataset`. Off: judged on a held-out quarter
            of 16 labels, it went back on all runs and ended at 0.602 against 0.700. Use it with a held-out set large
            enough to measure the few points a round moves.

        > Data

        text_column (`str`, *optional*, defaults to `"text"`):
            The input text of raw (not yet tokenized) datasets.
        label_column (`str`, *optional*, defaults to `"label"`):
            The labels: ints, or class names mapped through `model.config.label2id`. In the unlabeled set it is never
            trained on, only used for `pseudo_label_accuracy`.
        max_length (`int` or `None`, *optional*, defaults to `256`):
            Truncation length in tokens; `None`: the tokenizer's `model_max_length`.
        dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
            Processes that tokenize each dataset (`datasets.Dataset.map(num_proc=...)`), as in TRL; the tokenized
            rows are cached in `output_dir` once, for every round and every process of a launch. `None`: this process.

        > Model and saving

        model_init_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            `AutoModelForSequenceClassification.from_pretrained` arguments when the trainer's `model` is a name or
            path, e.g. `{"revision": "v1.0", "dtype": "bfloat16"}` (JSON on the command line). Those that locate the
            files (`revision`, `subfolder`, `trust_remote_code`, `cache_dir`, `token`, `local_files_only`) also load
            the tokenizer and config. `num_labels`, `id2label` and `label2id` come from the labeled set.
        use_hub_kernels (`bool` or `None`, *optional*, defaults to `None`):
            transformers 5 loads models with Hub kernels when the `kernels` package is installed, and fetches them at
            the first `train()` / `eval()` on CUDA, which fails offline in the middle of a run. `None` uses them only
            when they can be had (not offline, and the kernelization succeeds when the trainer is built; else the torch
            layers, with a warning), `True` requires them (an error when the trainer is built), `False` never.
        save_merged_model (`bool`, *optional*, defaults to `False`):
            With a PEFT student, `save_model` and `push_to_hub` write the model with the adapter merged into the base
            weights instead of the adapter; checkpoints always hold the adapter, so training resumes from them.
    """

    # A JSON object string given for these (on the command line) is parsed into a dict by `TrainingArguments`.
    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs"]
    # What each field accepts (`validation.py`), checked in `__post_init__`; registries are read when checked, so a
    # teacher, rule or augmentation registered later is accepted.
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "self_training_rounds": [Integer(0)],
        "student_init": [Options(lambda: STUDENT_INITS)],
        "first_teacher": [Options(lambda: tuple(TEACHERS))],
        "label_name_template": [None, Template()],
        "prototype_refinement_steps": [Integer(0)],
        "student_epochs": [None, Real(0, finite=True)],
        "min_steps_per_round": [Integer(0)],
        "confidence_threshold": [Real(0, 1)],
        "class_balance": [Boolean()],
        "class_balance_prior": [Options(lambda: CLASS_BALANCE_PRIORS)],
        "max_pseudo_labels": [None, Integer(1)],
        "selection_strategy": [Options(lambda: tuple(SELECTION_RULES))],
        "pseudo_label_fraction": [Real(0, 1, closed="right")],
        "entropy_threshold": [Real(0, 1, closed="right")],
        "soft_pseudo_labels": [Boolean()],
        "consistency_weight": [None, Real(0, closed="left")],
        "consistency_augmentation": [Options(lambda: tuple(AUGMENTATIONS))],
        "token_dropout": [Real(0, 1, closed="left")],
        "token_dropout_mode": [Options(lambda: TOKEN_DROPOUT_MODES)],
        "consistency_loss": [Options(lambda: tuple(DIVERGENCES))],
        "consistency_temperature": [Real(0, finite=True)],
        "consistency_confidence": [Real(0, 1, closed="both")],
        "consistency_rampup_steps": [Integer(0)],
        "unlabeled_batch_ratio": [Real(0, finite=True)],
        "pseudo_label_top_k": [Integer(0)],
        "collapse_alarm_margin": [None, Real(0, 1)],
        "max_length": [None, Integer(2)],
        "dataset_num_proc": [None, Integer(1)],
        "use_hub_kernels": [None, Boolean()],
    }

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

    first_teacher: str = field(
        default="embeddings",
        metadata={
            "help": "Who labels the pool in round 1: 'model' (the model fine-tuned on the labeled set in round 0) or "
            "'embeddings' (class prototypes in the initial encoder's mean-pooled embedding space).",
            "choices": list(TEACHERS),
        },
    )
    label_name_template: str | None = field(
        default="This sentence is {}.",
        metadata={
            "help": "With first_teacher='embeddings': prompt with {} for the class name, embedded into each class's "
            "prototype. Skipped when class names are numbers or LABEL_<i>; none never uses the names."
        },
    )
    prototype_refinement_steps: int = field(
        default=1,
        metadata={
            "help": "With first_teacher='embeddings': times the class prototypes are re-estimated from the pool rows "
            "round 1's selection keeps, with the labeled rows (a k-means step). 0: the labeled rows only."
        },
    )
    # `str` so that a command line can say `none` (HfArgumentParser parses it as a string; `__post_init__` converts).
    student_epochs: float | str | None = field(
        default=1.0,
        metadata={
            "help": "Epochs of each pseudo-labeled round (1, 2, ...), at least min_steps_per_round steps; round 0 "
            "trains num_train_epochs. none (None in Python, null in YAML): num_train_epochs in every round."
        },
    )
    min_steps_per_round: int = field(
        default=100,
        metadata={
            "help": "Train each round for its epochs (num_train_epochs, or student_epochs), or for at least this many "
            "optimizer steps when the epochs are fewer (small labeled sets). max_steps > 0 overrides it; 0 turns it "
            "off. Runs with self_training_rounds=0 train what TrainingArguments says."
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
    class_balance_prior: str = field(
        default="labeled",
        metadata={
            "help": "The class shares class_balance keeps: 'labeled' (the labeled set's) or 'pool' (the pool's, "
            "estimated each round from the teacher's probabilities by EM, recorded as pool_class_prior).",
            "choices": list(CLASS_BALANCE_PRIORS),
        },
    )
    max_pseudo_labels: int | None = field(
        default=None,
        metadata={"help": "Largest number of pseudo-labels accepted per round (the most confident). None: no cap."},
    )
    selection_strategy: str = field(
        default="topk",
        metadata={
            "help": "How a round chooses its pseudo-labels: 'threshold' (confidence >= confidence_threshold), "
            "'adaptive' (FlexMatch per-class thresholds from each class's learning status), 'topk' (the most "
            "confident pseudo_label_fraction * round of the pool, no threshold) or 'entropy' (normalized predictive "
            "entropy <= entropy_threshold).",
            "choices": list(SELECTION_RULES),
        },
    )
    pseudo_label_fraction: float = field(
        default=0.4,
        metadata={
            "help": "With selection_strategy='topk': share of the pool each round adds (round r keeps "
            "fraction * r of it), in (0, 1]."
        },
    )
    entropy_threshold: float = field(
        default=0.5,
        metadata={
            "help": "With selection_strategy='entropy': keep a pseudo-label when the teacher's predictive entropy, "
            "divided by log(number of classes), is at most this, in (0, 1]."
        },
    )
    soft_pseudo_labels: bool = field(
        default=False,
        metadata={
            "help": "Train selected rows on the teacher's full probability distribution, weighted by their "
            "confidence, instead of the argmax class. Labeled rows keep one-hot targets."
        },
    )

    # Consistency
    consistency_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight lambda of the token-dropout consistency loss, >= 0. 0 turns it off (no cost). Unset: 1.0 "
            "when the unlabeled pool is a datasets.Dataset (not a stream), the tokenizer can pad, there is no "
            "compute_loss_func and there are >= 2 classes; else 0."
        },
    )
    consistency_augmentation: str = field(
        default="token_dropout",
        metadata={
            "help": "How the noised copy of an unlabeled text is made (see augment.py): 'token_dropout'.",
            "choices": list(AUGMENTATIONS),
        },
    )
    token_dropout: float = field(
        default=0.15,
        metadata={"help": "Probability of dropping each non-special token of an unlabeled text, in [0, 1)."},
    )
    token_dropout_mode: str = field(
        default="mask",
        metadata={
            "help": "'mask' (replace by the mask token, or unk when there is none) or 'delete' (remove and re-pad).",
            "choices": list(TOKEN_DROPOUT_MODES),
        },
    )
    consistency_loss: str = field(
        default="kl",
        metadata={
            "help": "Divergence between the clean-text target and the dropped-text prediction: 'kl' or 'mse' (on "
            "probabilities).",
            "choices": list(DIVERGENCES),
        },
    )
    consistency_temperature: float = field(
        default=1.0,
        metadata={"help": "The clean-text target is softmax(logits / temperature), > 0; below 1 sharpens it."},
    )
    consistency_confidence: float = field(
        default=0.0,
        metadata={
            "help": "Only unlabeled examples whose clean-text top probability reaches this contribute, in [0, 1]."
        },
    )
    consistency_rampup_steps: int = field(
        default=0,
        metadata={"help": "Lambda rises linearly from 0 to `consistency_weight` over this many steps of each round."},
    )
    unlabeled_batch_ratio: float = field(
        default=1.0,
        metadata={"help": "mu: unlabeled examples per labeled example in a step (per device), > 0."},
    )

    # Pseudo-labeling pass
    pseudo_label_top_k: int = field(
        default=0,
        metadata={
            "help": "Also keep each row's k most probable classes and their probabilities (in pseudo_label() and the "
            "per-round files). 0: only the argmax class."
        },
    )
    save_pseudo_labels: bool = field(
        default=True,
        metadata={
            "help": "Write each round's per-row index, pseudo-label, confidence (and top-k) and selection to "
            "<output_dir>/pseudo_labels/round-{r}.parquet (main process only)."
        },
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
    dataset_num_proc: int | None = field(
        default=None,
        metadata={"help": "Processes that tokenize each dataset (Dataset.map num_proc). None: this process only."},
    )

    # Model
    model_init_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for AutoModelForSequenceClassification.from_pretrained when the trainer's "
            'model is a name or path, as a JSON string, e.g. \'{"revision": "v1.0", "dtype": "bfloat16"}\'.'
        },
    )

    # Saving
    save_merged_model: bool = field(
        default=False,
        metadata={
            "help": "With a PEFT student, save and push the model with the adapter merged into the base weights "
            "instead of the adapter. Checkpoints always hold the adapter."
        },
    )
    use_hub_kernels: bool | None = field(
        default=None,
        metadata={
            "help": "Hub kernels (the `kernels` package) for the layers that have them, which transformers 5 uses "
            "by default: none (unset) uses them when they can be had (not offline, and fetched without error when "
            "the trainer is built), true requires them, false never uses them."
        },
    )
    # Set by a trainer that chose `consistency_weight` itself (it was `None`): a trainer built later with this config
    # chooses again instead of taking the earlier choice for the user's.
    _consistency_weight_chosen: bool = field(
        default=False, init=False, repr=False, metadata={"help": "Set by the trainer: it chose consistency_weight."}
    )

    def __post_init__(self):
        # Before `super().__post_init__()`, which parses the JSON and would fail with a bare `JSONDecodeError`.
        if isinstance(self.model_init_kwargs, str) and self.model_init_kwargs.strip().startswith("{"):
            try:
                json.loads(self.model_init_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"`model_init_kwargs` is not valid JSON ({error}), got {self.model_init_kwargs!r}."
                ) from None
        if not self.use_cpu and launched_on_several_processes() and not has_accelerator():
            # `accelerate launch --num_processes N` on a machine without GPUs: `TrainingArguments` trains the processes
            # together (gloo) only with `use_cpu=True`; without it, each process would run the whole training alone.
            logger.info("Several processes and no GPU: setting `use_cpu=True` so that they train together on the CPU.")
            self.use_cpu = True
        super().__post_init__()
        if self.dataloader_pin_memory and (self.use_cpu or not has_accelerator()):
            # Pinned memory only speeds up copies to an accelerator; without one, torch warns at every DataLoader.
            self.dataloader_pin_memory = False
        if self.output_dir is not None and os.path.isfile(self.output_dir):
            raise ValueError(
                f"`output_dir` {self.output_dir!r} is a file: give a directory (it is created if missing)."
            )
        # How a command line says None.
        if isinstance(self.student_epochs, str):
            self.student_epochs = _none_or_float(self.student_epochs)
        if isinstance(self.label_name_template, str) and self.label_name_template.strip().lower() in ("", "none"):
            self.label_name_template = None
        check_constraints(self, self._parameter_constraints)
        if self.model_init_kwargs is not None and not isinstance(self.model_init_kwargs, dict):
            raise ValueError(
                "`model_init_kwargs` must be None, a dict or a JSON object string (starting with '{'), got "
                f"{self.model_init_kwargs!r}."
            )
        reserved = sorted(MODEL_LABEL_KWARGS & set(self.model_init_kwargs or {}))
        if reserved:
            raise ValueError(
                f"`model_init_kwargs` cannot set {reserved}: the classes come from the labeled set (got "
                f"{self.model_init_kwargs!r})."
            )
        if self.save_merged_model and (self.deepspeed or self.fsdp):
            # Merging needs the whole adapter and base on one process; sharded weights would merge partially.
            raise ValueError(
                f"`save_merged_model`=True is not supported with DeepSpeed or FSDP (got `deepspeed`={self.deepspeed!r},"
                f" `fsdp`={self.fsdp!r}): save the adapter, then merge it with `merge_and_unload()`."
            )

    def round_epochs(self, round_: int) -> float:
        """The epochs round `round_` trains: `num_train_epochs` in round 0, else `student_epochs` (when set)."""
        if round_ == 0 or self.student_epochs is None:
            return self.num_train_epochs
        return self.student_epochs

    def round_max_steps(self, num_examples: int, world_size: int = 1, round_: int = 0) -> int:
        """
        The `max_steps` round `round_` runs with on `num_examples` rows: `max_steps` when it is set, else
        `min_steps_per_round` when its epochs (`round_epochs`) would take fewer optimizer steps, else `-1` (epochs).
        """
        if self.max_steps > 0 or self.min_steps_per_round == 0:
            return self.max_steps
        batches = math.ceil(num_examples / (self.per_device_train_batch_size * world_size))
        steps_per_epoch = max(math.ceil(batches / self.gradient_accumulation_steps), 1)
        if math.ceil(self.round_epochs(round_) * steps_per_epoch) < self.min_steps_per_round:
            return self.min_steps_per_round
        return self.max_steps


def launched_on_several_processes() -> bool:
    """True under `accelerate launch` / `torchrun` with more than one process (they set `WORLD_SIZE`)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def has_accelerator() -> bool:
    """Whether torch sees a GPU or another accelerator (CUDA, XPU, MPS, ...)."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available()


def _none_or_float(value: str) -> float | str | None:
    """A command line's `none`/`null` as `None`, a number as a `float`; anything else unchanged, for the check."""
    if value.strip().lower() in ("none", "null"):
        return None
    try:
        return float(value)
    except ValueError:
        return value
