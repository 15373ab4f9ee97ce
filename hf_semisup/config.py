import json
import logging
import math
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .embedding_teacher import FIRST_TEACHERS
from .selection import SELECTION_STRATEGIES


logger = logging.getLogger(__name__)

STUDENT_INITS = ("continue", "reset")
TOKEN_DROPOUT_MODES = ("mask", "delete")
CONSISTENCY_LOSSES = ("kl", "mse")
# Lambda of the consistency loss when `consistency_weight` is unset and the pool allows it (see the docstring).
DEFAULT_CONSISTENCY_WEIGHT = 1.0
# `from_pretrained` arguments the trainer derives from the labeled set.
MODEL_LABEL_KWARGS = {"num_labels", "id2label", "label2id"}


@dataclass
class SemiSupervisedConfig(TrainingArguments):
    r"""
    Configuration for [`SemiSupervisedTrainer`]: every [`~transformers.TrainingArguments`] field, plus the ones below.

    Training runs in rounds. Round 0 fits the model on the labeled set. Each later round, the current model (the
    teacher) labels the unlabeled pool, the confident predictions are kept, and a student trains on labeled +
    pseudo-labeled data and becomes the next teacher.

    With `consistency_weight > 0`, every training step also draws a batch of unlabeled texts, drops some of their tokens,
    and pulls the model's prediction on the dropped text toward its prediction on the clean text (UDA-style consistency
    regularization, with token dropout instead of back-translation). This works in every round, and on its own with
    `self_training_rounds=0`.

    Parameters:
        > Self-training

        self_training_rounds (`int`, *optional*, defaults to `2`):
            Number of pseudo-labeling rounds after the first supervised fit. `0` is plain fine-tuning. Two because on
            the label-efficiency benchmark (movie snippets, three seeds, consistency loss off) one round ended lower on
            every seed (0.694 against 0.700 at 8 labels per class, 0.701 against 0.709 at 32) and a third ended level
            (0.699 at 8 per class) in 1.6 times the time.
        student_init (`str`, *optional*, defaults to `"reset"`):
            Where each round's student starts: `"reset"` restarts from the initial weights (Noisy Student, STraTA),
            which keeps a teacher's mistakes from compounding in the weights; `"continue"` fine-tunes the teacher.
        student_epochs (`float` or `None`, *optional*, defaults to `1.0`):
            Epochs each student trains on labeled + pseudo-labeled rows (rounds 1, 2, ...; still at least
            `min_steps_per_round` steps). Round 0, on the labeled set alone, trains `num_train_epochs`. `None` (`none`
            on the command line) uses `num_train_epochs` in every round. One epoch because pseudo-labels are noisy: a
            network fits the correct labels first and memorizes the wrong ones later; after three epochs the student's
            training loss is near 0 and it is near-certain on most of the pool, which also blunts the next round's
            top-k ranking (see the defaults note under Selection).
        min_steps_per_round (`int`, *optional*, defaults to `100`):
            Each round trains for its epochs (`num_train_epochs`, or `student_epochs` for students), or for this many
            optimizer steps when those epochs are fewer: with a few dozen labels, 3 epochs are a handful of steps and
            leave a teacher too weak to label anything (label-efficiency benchmark, `--quick`, 16 labels, batch 8:
            the plain 3 epochs = 6 steps give 0.476 test accuracy, 60 steps 0.567, 100 steps 0.588, 120 steps 0.586,
            240 steps 0.591: the gain levels off near 100). Large (pseudo-labeled) training sets keep their epochs.
            `max_steps > 0` overrides both; `0` turns the floor off (then `self_training_rounds=0` is exactly a plain
            `Trainer` run).
        first_teacher (`str`, *optional*, defaults to `"embeddings"`):
            Who labels the pool in round 1:

            - `"model"`: the model fine-tuned in round 0 on the labeled set, like every later teacher.
            - `"embeddings"`: the initial (pretrained) encoder, untouched, through class prototypes: each text's
              mean-pooled embedding is compared by cosine similarity with each class's mean labeled embedding (plus the
              embedding of `label_name_template` filled in with the class name). A few labeled examples fine-tune a
              weak and overconfident teacher; the pretrained embedding space already groups texts of a class, and
              needs nothing trained (see `embedding_teacher.py`). Students from round 1 on, and later teachers, are
              fine-tuned models as before.
        label_name_template (`str` or `None`, *optional*, defaults to `"This sentence is {}."`):
            With `first_teacher="embeddings"`, a prompt with `{}` for the class name whose embedding joins each class's
            prototype, as in SetFit's templated examples. Skipped, with an info log, when a class name is a number or a
            `LABEL_<i>` placeholder; `None` never uses the names.
        prototype_refinement_steps (`int`, *optional*, defaults to `1`):
            With `first_teacher="embeddings"`, how many times the prototypes are re-estimated before they label
            round 1: the pool rows that round's selection keeps join their predicted class's labeled rows in the mean
            (a k-means step from the labeled means). A handful of labeled texts place a prototype wherever they happen to sit;
            the confident pool rows move it toward the centre of what the pool holds for the class. Each step costs a
            pass over the pool and an embedding pass over the kept rows. `0` keeps the labeled-only prototypes. On the
            label-efficiency benchmark, 8 labels per class, one step raised round 1's pseudo-label accuracy on every
            seed of both data sets (movie snippets 0.790 against 0.748, subjectivity 0.969 against 0.942, means of
            three seeds) and the final accuracy from 0.682 to 0.700 and from 0.866 to 0.878; at 32 labels per class,
            where the labeled means are already well placed, it ended 1.0 point lower (0.709 against 0.719, within
            the seed spread).

        > Selection

        confidence_threshold (`float`, *optional*, defaults to `0.9`):
            A pseudo-label is kept only if the teacher's top softmax probability reaches this value. Must be in
            (0, 1).
        class_balance (`bool`, *optional*, defaults to `True`):
            Keep the accepted pseudo-labels' class proportions at the labeled set's class prior: the most confident
            predictions of each class are kept up to that class's quota, so no round floods the training set with
            the majority class. When the teacher predicts a class too rarely to fill its quota, every quota shrinks
            with it; a teacher that predicts one class only gets nothing accepted that round.
        max_pseudo_labels (`int` or `None`, *optional*, defaults to `None`):
            Largest number of pseudo-labels accepted per round (the most confident ones). `None` means no cap.
        selection_strategy (`str`, *optional*, defaults to `"topk"`):
            How a round chooses its pseudo-labels (see `selection.py`):

            - `"threshold"`: rows whose confidence reaches `confidence_threshold`.
            - `"adaptive"`: one threshold per class that follows how well the model has learned it (FlexMatch): with
              `sigma_c` the rows predicted `c` with confidence >= `confidence_threshold`, `beta_c = sigma_c / max(max_c
              sigma_c, unconfident rows)` and the class threshold is `beta_c / (2 - beta_c) * confidence_threshold`,
              at least `1 / num_labels + 0.01`. A class the model rarely predicts confidently gets a lower threshold.
              The thresholds are recorded in the history (`class_thresholds`).
            - `"topk"`: no threshold: round `r` keeps the `pseudo_label_fraction * r` most confident share of the pool
              (a curriculum), split between classes by the labeled class prior with `class_balance`. The history's
              `threshold` is then the lowest accepted confidence.

            `class_balance` and `max_pseudo_labels` apply with every strategy.
        pseudo_label_fraction (`float`, *optional*, defaults to `0.4`):
            With `selection_strategy="topk"`, the share of the pool that each round adds: round `r` keeps `min(1,
            pseudo_label_fraction * r)` of it. In (0, 1].
        soft_pseudo_labels (`bool`, *optional*, defaults to `False`):
            Train on the teacher's full probability distribution for each selected row (cross-entropy against the soft
            target), weighted by the row's confidence, instead of its argmax class. Labeled rows keep their one-hot
            target with weight 1.

        The defaults (`first_teacher="embeddings"` with `prototype_refinement_steps=1`, `"topk"` with
        `pseudo_label_fraction=0.4`, hard pseudo-labels, `student_epochs=1`) come from the label-efficiency benchmark
        (`benchmarks/label_efficiency.py`, `benchmarks/README.md`; movie snippets and a subjectivity set, 8 labels per
        class, three seeds). With the round-0 model as first teacher and the 0.9 threshold (the earlier defaults),
        self-training scored below supervised-only (0.540 against 0.553, 1,000-row pool): the model fit on 16 labels
        labels the pool at 0.58 accuracy and is overconfident, so its students learn its mistakes, and no selection rule
        (threshold, adaptive, top-k, soft labels) fixed that. The class prototypes of the untouched encoder label a
        4,000-row pool at 0.635 and their most confident fifth at 0.791; with them, self-training scores 0.680 +- 0.048
        on movie snippets, above supervised-only (0.553 +- 0.070) and SetFit (0.604 +- 0.060) on every seed. Top-k goes
        with them: the prototypes' scores are scaled cosine similarities, not calibrated probabilities, so a fixed
        threshold would keep a different share on every data set, while a share of the ranked pool adapts to the
        confidence distribution, and the class quotas to the labeled class prior. The share and the students' length
        were then set together: a fifth of the pool per round and three epochs per student left the subjectivity set's
        seed 0 below supervised-only (0.868 against 0.872; its most confident fifth is 98% right but holds only the easy
        texts), while 0.4 and one epoch score 0.886 there. A student trained three epochs is near-certain on most of the
        pool, which blunts the next round's ranking (movie snippets, seed 0: the lowest confidence in its top 40% is
        0.998, after one epoch 0.938). The means at 8 labels per class did not move (movie snippets 0.682 +- 0.057
        against 0.680; subjectivity 0.866 +- 0.022 against 0.865) and rose at 32 (movie snippets 0.719 +- 0.019 against
        0.709), and every seed of both sets is now above supervised-only. The two go together: one-epoch students with a
        fifth of the pool per round score lower on both sets and budgets (0.666, 0.859, 0.700) and fall below
        supervised-only on subjectivity's seed 0. Refining the prototypes once then raised the 8-label means to 0.700 +-
        0.037 (movie snippets, 53% of the gap to 4,000 labels) and 0.878 +- 0.007 (subjectivity). These were measured
        with a sentence-embedding encoder (all-MiniLM-L6-v2); for an encoder not trained for sentence embeddings,
        compare with `first_teacher="model"` on validation data.

        > Consistency

        consistency_weight (`float` or `None`, *optional*, defaults to `None`):
            Weight lambda of the consistency loss added to the supervised loss. `0` turns it off and adds no cost.
            `None` lets the trainer choose: [`DEFAULT_CONSISTENCY_WEIGHT`] (1.0) when the unlabeled pool is a
            `datasets.Dataset`, there is a tokenizer with a padding token to drop tokens with, no `compute_loss_func`
            and at least 2 classes; `0` otherwise (no pool, a streamed pool, ...). The trainer writes the value it
            chose back into the config (and chooses again if the config is reused for another trainer). Why 1.0:
            on the label-efficiency benchmark (movie snippets, 8 labels per class, 3 seeds) lambda 0 / 1 / 3 on top
            of self-training ended at 0.700 / 0.708 / 0.690 accuracy (lambda 1: 0.703 with today's random stream); on
            subjectivity 1 beats 0 on every seed.
        token_dropout (`float`, *optional*, defaults to `0.15`):
            Probability that each token of an unlabeled text is dropped in the noised copy, in [0, 1). Special tokens
            (CLS, SEP, padding and any other special token) are never dropped.
        token_dropout_mode (`str`, *optional*, defaults to `"mask"`):
            `"mask"` replaces a dropped token by the tokenizer's mask token (its unknown token when it has none);
            `"delete"` removes it and re-pads the batch.
        consistency_loss (`str`, *optional*, defaults to `"kl"`):
            Divergence between the clean-text target and the prediction on the dropped text: `"kl"` (KL(target ||
            prediction)) or `"mse"` (squared distance between the probability vectors). Computed in float32.
        consistency_temperature (`float`, *optional*, defaults to `1.0`):
            The clean-text target is `softmax(logits / temperature)`: below 1 sharpens it (UDA uses 0.4).
        consistency_confidence (`float`, *optional*, defaults to `0.0`):
            Only unlabeled examples whose clean-text top probability reaches this value contribute, in [0, 1].
        consistency_rampup_steps (`int`, *optional*, defaults to `0`):
            Lambda rises linearly from 0 to `consistency_weight` over this many optimizer steps of each round. `0`
            uses the full weight from the first step.
        unlabeled_batch_ratio (`float`, *optional*, defaults to `1.0`):
            mu: unlabeled examples per labeled example in a step, per device (`round(mu *
            per_device_train_batch_size)`, at least 1).

        The consistency defaults are neutral (no sharpening, no confidence mask, no ramp). Lambda 1 is on wherever the
        pool allows it because, added to self-training, it was ahead on the label-efficiency benchmark at 8 labels per
        class on 11 of 12 runs (seeds 0 to 5 on two data sets): 0.712 against 0.707 without it on movie snippets (mean
        of six seeds) and 0.889 against 0.879 on subjectivity, higher on every seed there. On its own
        (`self_training_rounds=0`) it is level with supervised-only on movie snippets (0.541 against 0.553). It costs:
        a run took 4.9 to 7.1 minutes against 2.9 to 3.4; `consistency_weight=0` trades those points for that time.

        > Pseudo-labeling pass

        pseudo_label_top_k (`int`, *optional*, defaults to `0`):
            Also keep each row's `k` most probable classes and their probabilities, in [`SemiSupervisedTrainer.pseudo_label`]
            and the per-round files. `0` keeps only the argmax class and its probability.
        save_pseudo_labels (`bool`, *optional*, defaults to `True`):
            Each round, write every pool row's index, pseudo-label, confidence (and top-k) and whether it was selected
            to `<output_dir>/pseudo_labels/round-{r}.parquet`, from the main process only, for inspection and reuse.

        > Guard rails

        collapse_alarm_margin (`float` or `None`, *optional*, defaults to `0.3`):
            Warn, and mark the round `collapse_alarm: true` in the history, when a class's share of the round's
            accepted pseudo-labels exceeds its share of the labeled set by more than this (with a 50/50 labeled set and
            `0.3`: more than 80% of one class). With `class_balance=True`, which keeps the labeled shares, it fires
            only on rounding (a handful of accepted rows). `None` disables the alarm. Must be in (0, 1).
        rollback_on_worse_eval (`bool`, *optional*, defaults to `False`):
            After each round, compare the eval metric (`metric_for_best_model`, by default the eval loss) with the
            previous round's: if it got worse, go back to the previous round's model and stop. Needs an
            `eval_dataset`. Off by default: on the label-efficiency benchmark, judged by the eval loss on a held-out
            quarter of 16 or 64 labeled examples (4 or 16 texts, where one text moves the accuracy by 25 or 6 points),
            it went back on all six runs and ended at 0.602 against 0.700 without it at 8 labels per class. Use
            it with a held-out set large enough to measure the few points a round changes.

        > Data

        text_column (`str`, *optional*, defaults to `"text"`):
            Column holding the input text in raw (not yet tokenized) datasets.
        label_column (`str`, *optional*, defaults to `"label"`):
            Column holding the labels: ints, or class names mapped through `model.config.label2id`. In the unlabeled
            dataset it is never trained on, only used to report `pseudo_label_accuracy`.
        max_length (`int` or `None`, *optional*, defaults to `256`):
            Texts are truncated to this many tokens. `None` uses the tokenizer's `model_max_length`.

        > Model

        model_init_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Keyword arguments for `AutoModelForSequenceClassification.from_pretrained` when the trainer's `model` is a
            name or path, e.g. `{"revision": "v1.0", "dtype": "bfloat16"}` (a JSON string on the command line). The
            ones that locate the files (`revision`, `subfolder`, `trust_remote_code`, `cache_dir`, `token`,
            `local_files_only`) also load the tokenizer and the config. The classes come from the labeled set, so
            `num_labels`, `id2label` and `label2id` are not accepted. Not used when `model` is already a model.

        > Saving

        save_merged_model (`bool`, *optional*, defaults to `False`):
            With a PEFT student, `save_model` and `push_to_hub` write the full model with the adapter merged into the
            base weights (loadable with `from_pretrained` alone) instead of the adapter. Checkpoints always hold the
            adapter, so training resumes from them. No effect without PEFT.
    """

    # A JSON object string given for these (on the command line) is parsed into a dict by `TrainingArguments`.
    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs"]

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
            "choices": list(FIRST_TEACHERS),
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
            "off."
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
    selection_strategy: str = field(
        default="topk",
        metadata={
            "help": "How a round chooses its pseudo-labels: 'threshold' (confidence >= confidence_threshold), "
            "'adaptive' (FlexMatch per-class thresholds from each class's learning status) or 'topk' (the most "
            "confident pseudo_label_fraction * round of the pool, no threshold).",
            "choices": list(SELECTION_STRATEGIES),
        },
    )
    pseudo_label_fraction: float = field(
        default=0.4,
        metadata={
            "help": "With selection_strategy='topk': share of the pool each round adds (round r keeps "
            "fraction * r of it), in (0, 1]."
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
            "choices": list(CONSISTENCY_LOSSES),
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
        if not isinstance(self.self_training_rounds, int) or self.self_training_rounds < 0:
            raise ValueError(f"`self_training_rounds` must be an integer >= 0, got {self.self_training_rounds!r}.")
        if isinstance(self.min_steps_per_round, bool) or not isinstance(self.min_steps_per_round, int):
            raise ValueError(f"`min_steps_per_round` must be an integer >= 0, got {self.min_steps_per_round!r}.")
        if self.min_steps_per_round < 0:
            raise ValueError(f"`min_steps_per_round` must be an integer >= 0, got {self.min_steps_per_round!r}.")
        if isinstance(self.student_epochs, str):
            self.student_epochs = _none_or_float(self.student_epochs)
        if self.student_epochs is not None and (
            not _is_number(self.student_epochs) or not 0.0 < self.student_epochs < float("inf")
        ):
            raise ValueError(f"`student_epochs` must be None or a number > 0, got {self.student_epochs!r}.")
        if not 0.0 < self.confidence_threshold < 1.0:
            raise ValueError(
                f"`confidence_threshold` must be in the open interval (0, 1), got {self.confidence_threshold!r}."
            )
        if self.max_pseudo_labels is not None and self.max_pseudo_labels < 1:
            raise ValueError(f"`max_pseudo_labels` must be None or an integer >= 1, got {self.max_pseudo_labels!r}.")
        if self.selection_strategy not in SELECTION_STRATEGIES:
            raise ValueError(
                f"`selection_strategy` must be one of {SELECTION_STRATEGIES}, got {self.selection_strategy!r}."
            )
        if not _is_number(self.pseudo_label_fraction) or not 0.0 < self.pseudo_label_fraction <= 1.0:
            raise ValueError(
                f"`pseudo_label_fraction` must be in the half-open interval (0, 1], got {self.pseudo_label_fraction!r}."
            )
        if not isinstance(self.soft_pseudo_labels, bool):
            raise ValueError(f"`soft_pseudo_labels` must be True or False, got {self.soft_pseudo_labels!r}.")
        if self.student_init not in STUDENT_INITS:
            raise ValueError(f"`student_init` must be one of {STUDENT_INITS}, got {self.student_init!r}.")
        if self.first_teacher not in FIRST_TEACHERS:
            raise ValueError(f"`first_teacher` must be one of {FIRST_TEACHERS}, got {self.first_teacher!r}.")
        if isinstance(self.label_name_template, str) and self.label_name_template.strip().lower() in ("", "none"):
            self.label_name_template = None  # how a command line says None
        if self.label_name_template is not None and (
            not isinstance(self.label_name_template, str) or self.label_name_template.count("{}") != 1
        ):
            raise ValueError(
                "`label_name_template` must be None or a string with one `{}` for the class name, got "
                f"{self.label_name_template!r}."
            )
        if (
            isinstance(self.prototype_refinement_steps, bool)
            or not isinstance(self.prototype_refinement_steps, int)
            or self.prototype_refinement_steps < 0
        ):
            raise ValueError(
                f"`prototype_refinement_steps` must be an integer >= 0, got {self.prototype_refinement_steps!r}."
            )
        if isinstance(self.pseudo_label_top_k, bool) or not isinstance(self.pseudo_label_top_k, int):
            raise ValueError(f"`pseudo_label_top_k` must be an integer >= 0, got {self.pseudo_label_top_k!r}.")
        if self.pseudo_label_top_k < 0:
            raise ValueError(f"`pseudo_label_top_k` must be an integer >= 0, got {self.pseudo_label_top_k!r}.")
        if self.collapse_alarm_margin is not None and not 0.0 < self.collapse_alarm_margin < 1.0:
            raise ValueError(
                f"`collapse_alarm_margin` must be None or in the open interval (0, 1), got {self.collapse_alarm_margin!r}."
            )
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
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"`max_length` must be None or an integer >= 2, got {self.max_length!r}.")
        if self.save_merged_model and (self.deepspeed or self.fsdp):
            # Merging needs the whole adapter and base on one process; sharded weights would merge partially.
            raise ValueError(
                f"`save_merged_model`=True is not supported with DeepSpeed or FSDP (got `deepspeed`={self.deepspeed!r},"
                f" `fsdp`={self.fsdp!r}): save the adapter, then merge it with `merge_and_unload()`."
            )
        self._validate_consistency()

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

    def _validate_consistency(self):
        # `not low <= x` rather than `x < low`, so that NaN is rejected too.
        if self.consistency_weight is not None and (
            not _is_number(self.consistency_weight) or not self.consistency_weight >= 0.0
        ):
            raise ValueError(f"`consistency_weight` must be None or a number >= 0, got {self.consistency_weight!r}.")
        if not _is_number(self.token_dropout) or not 0.0 <= self.token_dropout < 1.0:
            raise ValueError(f"`token_dropout` must be in the half-open interval [0, 1), got {self.token_dropout!r}.")
        if self.token_dropout_mode not in TOKEN_DROPOUT_MODES:
            raise ValueError(
                f"`token_dropout_mode` must be one of {TOKEN_DROPOUT_MODES}, got {self.token_dropout_mode!r}."
            )
        if self.consistency_loss not in CONSISTENCY_LOSSES:
            raise ValueError(f"`consistency_loss` must be one of {CONSISTENCY_LOSSES}, got {self.consistency_loss!r}.")
        if not _is_number(self.consistency_temperature) or not 0.0 < self.consistency_temperature < float("inf"):
            raise ValueError(
                f"`consistency_temperature` must be a finite number > 0, got {self.consistency_temperature!r}."
            )
        if not _is_number(self.consistency_confidence) or not 0.0 <= self.consistency_confidence <= 1.0:
            raise ValueError(
                f"`consistency_confidence` must be in the closed interval [0, 1], got {self.consistency_confidence!r}."
            )
        rampup = self.consistency_rampup_steps
        if not _is_number(rampup) or not isinstance(rampup, int) or rampup < 0:
            raise ValueError(f"`consistency_rampup_steps` must be an integer >= 0, got {rampup!r}.")
        if not _is_number(self.unlabeled_batch_ratio) or not 0.0 < self.unlabeled_batch_ratio < float("inf"):
            raise ValueError(
                f"`unlabeled_batch_ratio` must be a finite number > 0, got {self.unlabeled_batch_ratio!r}."
            )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
