import logging
import math
import os

import datasets
import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import TrainOutput, enable_full_determinism

from .adapters import is_peft_model, load_trainable_state, prepare_peft_model, trainable_state
from .checkpointing import SelfTrainingCheckpointMixin, deterministic_metrics, load_pseudo_labels
from .config import DEFAULT_CONSISTENCY_WEIGHT, SemiSupervisedConfig
from .consistency import CONSISTENCY_KEY, ConsistencyRegularizer
from .data import (
    check_dataset_types,
    check_every_class_labeled,
    drop_labeled_duplicates,
    is_tokenized,
    label_names_of,
    prepare_dataset,
    prepare_stream,
    warn_on_unknown_tokens,
)
from .embedding_teacher import PrototypeTeacherMixin
from .guards import NonFiniteError, check_finite_model, gathered_loss
from .hub import HubMixin
from .metrics import DEFAULT_METRIC_NAMES, compute_classification_metrics
from .modeling import align_label_names, check_local_path, file_location_kwargs, head_label_kwargs, load_classifier
from .pseudo_labeling import PSEUDO_LABELS_DIR
from .rounds import RoundHistoryMixin, synchronize_record
from .self_training import SelfTrainingMixin
from .soft_labels import SOFT_TARGET_COLUMNS, pop_soft_targets, soft_cross_entropy


logger = logging.getLogger(__name__)


class SemiSupervisedTrainer(
    SelfTrainingCheckpointMixin, RoundHistoryMixin, SelfTrainingMixin, PrototypeTeacherMixin, HubMixin, Trainer
):
    r"""
    A [`~transformers.Trainer`] for sequence classification that also learns from unlabeled text by iterative
    self-training.

    Round 0 fits the model on the labeled `train_dataset`. Each of the `args.self_training_rounds` later rounds, the
    current model (the teacher) labels `unlabeled_dataset`, the confident predictions are selected (see
    [`SemiSupervisedConfig`]), and a student trains on labeled + selected rows and becomes the next teacher.

    With `args.consistency_weight > 0`, every step of every round also adds a token-dropout consistency loss on a batch
    of `unlabeled_dataset` (see [`~hf_semisup.consistency.ConsistencyRegularizer`]).

    Args:
        model (`PreTrainedModel`, `torch.nn.Module`, [`~peft.PeftModel`] or `str`):
            The classifier, or a name or path loaded with `AutoModelForSequenceClassification.from_pretrained` and
            `args.model_init_kwargs` (its `num_labels` and label names then come from the labeled set). A `PeftModel`
            (loaded with `is_trainable=True`) trains its adapter and classification head; then `peft_config` must be
            `None`.
        args ([`SemiSupervisedConfig`], *optional*):
            The configuration. `None` builds a default one writing to `<model name>-semisup`; a plain
            `TrainingArguments` is converted, with the semi-supervised fields at their defaults.
        train_dataset ([`~datasets.Dataset`]):
            The labeled set: raw text (`args.text_column`) or tokenized (`input_ids`), with labels (`args.label_column`)
            as ints or class names.
        eval_dataset ([`~datasets.Dataset`] or `dict[str, Dataset]`, *optional*):
            Evaluated after every round.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizes raw text. Loaded from `model` when it is a name and this is `None`.
        compute_metrics (`Callable`, *optional*):
            Defaults to accuracy and macro-F1.
        unlabeled_dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`], *optional*):
            The unlabeled pool, raw or tokenized. A label column in it is never trained on; it only feeds the
            `pseudo_label_accuracy` diagnostic (not for an `IterableDataset`). Required when
            `args.self_training_rounds > 0` or `args.consistency_weight > 0`. Rows whose text is also in the labeled
            set are dropped, with a warning. A `Dataset` is tokenized once for all rounds and memory-mapped (an
            in-memory one is written under `<output_dir>/pseudo_labels/cache`); an `IterableDataset` is tokenized as
            it is read, every round.
        peft_config ([`~peft.PeftConfig`], *optional*):
            Wrap `model` with this adapter, e.g. `LoraConfig(task_type="SEQ_CLS", r=8)`: only the adapter and the
            classification head train, the base stays frozen, and pseudo-labels come from the adapted model. With
            `student_init="reset"` each round starts from the initial adapter and head. `save_model` writes the
            adapter, or the merged model when `args.save_merged_model` is set.

    Saving to `output_dir` (not to a checkpoint) also writes `self_training_history.json` and a model card
    (`README.md`); `push_to_hub` uploads them with the model and tokenizer.

    Other arguments are those of [`~transformers.Trainer`], in the same order.

    Reliability: every checkpoint carries the self-training state (see `checkpointing.py`), so
    `train(resume_from_checkpoint=True)` resumes an interrupted run where it stopped; each round is seeded with
    `args.seed + round`, so one seed gives one result. A non-finite loss stops the run with [`NonFiniteError`]; the
    `collapse_alarm_margin` and `rollback_on_worse_eval` guard rails are recorded in `self_training_history`.
    Generators of extensions (e.g. an unlabeled sampler's) are checkpointed once registered in `checkpointed_rngs`.
    """

    _tag_names = ["hf-semisup", "semi-supervised", "text-classification"]

    def __init__(
        self,
        model: PreTrainedModel | torch.nn.Module | str | None = None,
        args: SemiSupervisedConfig | TrainingArguments | None = None,
        data_collator=None,
        train_dataset: datasets.Dataset | None = None,
        eval_dataset: datasets.Dataset | dict[str, datasets.Dataset] | None = None,
        processing_class=None,
        model_init=None,
        compute_loss_func=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        unlabeled_dataset: datasets.Dataset | datasets.IterableDataset | None = None,
        peft_config=None,
    ):
        # Args
        if isinstance(model, os.PathLike):
            model = os.fspath(model)  # a `pathlib.Path` to a saved model loads like its string
        args = self._resolve_args(args, model)
        if train_dataset is None:
            raise ValueError("`train_dataset` (the labeled set) is required.")
        check_dataset_types(
            train_dataset=train_dataset, eval_dataset=eval_dataset, unlabeled_dataset=unlabeled_dataset
        )
        # Unset, the trainer chooses once the model and tokenizer are loaded (below), and writes its choice back; a
        # config reused for another trainer chooses again. Only a value the user set is checked here.
        consistency_chosen = args.consistency_weight is None or getattr(args, "_consistency_weight_chosen", False)
        if consistency_chosen:
            args._consistency_weight_chosen = True
            args.consistency_weight = None
        explicit_weight = args.consistency_weight or 0.0
        if (args.self_training_rounds > 0 or explicit_weight > 0) and unlabeled_dataset is None:
            raise ValueError(
                "`unlabeled_dataset` is required when `self_training_rounds` > 0 or `consistency_weight` > 0 (got "
                f"self_training_rounds={args.self_training_rounds}, consistency_weight={args.consistency_weight})."
            )
        if explicit_weight > 0 and isinstance(unlabeled_dataset, datasets.IterableDataset):
            raise ValueError(
                f"`consistency_weight`={args.consistency_weight} needs a `datasets.Dataset` as `unlabeled_dataset` "
                "(its sampler reshuffles the pool each pass); got an `IterableDataset`."
            )
        if explicit_weight > 0 and compute_loss_func is not None:
            raise ValueError(
                f"`compute_loss_func` cannot be combined with `consistency_weight`={args.consistency_weight}: the "
                "consistency loss computes the supervised cross-entropy itself."
            )
        if args.soft_pseudo_labels and compute_loss_func is not None:
            raise ValueError(
                "`compute_loss_func` cannot be combined with `soft_pseudo_labels`=True: the soft pseudo-label loss "
                "computes the cross-entropy itself."
            )
        metric = args.metric_for_best_model
        if metric is not None and compute_metrics is None and not isinstance(eval_dataset, dict):
            if metric.removeprefix("eval_") not in DEFAULT_METRIC_NAMES:
                raise ValueError(
                    f"`metric_for_best_model`={metric!r} is not a metric of the evaluation: with the default "
                    f"`compute_metrics` it is one of {', '.join(map(repr, DEFAULT_METRIC_NAMES))}."
                )
        if args.rollback_on_worse_eval and eval_dataset is None:
            raise ValueError(
                "`rollback_on_worse_eval`=True compares eval metrics between rounds: pass an `eval_dataset`."
            )

        # Processing class
        if isinstance(model, str):
            check_local_path(model, "`model`")
        if processing_class is None and isinstance(model, str):
            processing_class = AutoTokenizer.from_pretrained(model, **file_location_kwargs(args.model_init_kwargs))

        # Model
        label_names = (
            label_names_of(train_dataset, args.label_column)
            if args.label_column in train_dataset.column_names
            else None
        )
        if isinstance(model, str):
            set_seed(args.seed)  # the new classification head must not depend on the caller's RNG state
            model = self._create_model(model, train_dataset, args)
        if model is None:
            raise ValueError("`model` is required (a model, or a name or path to load).")
        align_label_names(model.config, label_names)

        # PEFT
        model = prepare_peft_model(model, peft_config)

        if consistency_chosen:
            args.consistency_weight = self._default_consistency_weight(
                unlabeled_dataset, processing_class, compute_loss_func, model.config.num_labels
            )

        # Datasets
        prepare = dict(
            tokenizer=processing_class,
            text_column=args.text_column,
            label_column=args.label_column,
            label2id=model.config.label2id,
            num_labels=model.config.num_labels,
            max_length=args.max_length,
        )
        with args.main_process_first(desc="dataset preparation"):
            self.labeled_dataset, _ = prepare_dataset(train_dataset, name="labeled set (`train_dataset`)", **prepare)
            check_every_class_labeled(self.labeled_dataset["labels"], model.config.id2label, "labeled set")
            warn_on_unknown_tokens(self.labeled_dataset, processing_class, "labeled set")
            if eval_dataset is not None:
                eval_dataset = self._prepare_eval(eval_dataset, prepare)
            if isinstance(unlabeled_dataset, datasets.Dataset) and len(unlabeled_dataset):
                unlabeled_dataset = drop_labeled_duplicates(train_dataset, unlabeled_dataset, args.text_column)
            self.unlabeled_source = unlabeled_dataset
            self.unlabeled_dataset, self.unlabeled_gold_labels = self._prepare_unlabeled(
                unlabeled_dataset, prepare, args
            )

        # Collator
        if data_collator is None and processing_class is not None:
            data_collator = DataCollatorWithPadding(processing_class)
        if compute_metrics is None:
            compute_metrics = compute_classification_metrics

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=self.labeled_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # Sequence classifiers take `**kwargs` but average their loss over their own batch, ignoring
        # `num_items_in_batch`: told they accept loss kwargs, `Trainer` multiplies that loss by the world size, which
        # doubles the logged loss and changes gradient clipping at 2 processes.
        if compute_loss_func is None:
            self.model_accepts_loss_kwargs = False

        # Consistency
        self.consistency = None
        if args.consistency_weight > 0:
            if self.model.config.num_labels < 2:
                raise ValueError(
                    f"`consistency_weight` > 0 needs a classifier with >= 2 labels, got `num_labels`="
                    f"{self.model.config.num_labels}."
                )
            self.consistency = ConsistencyRegularizer(
                args, self.unlabeled_dataset, self.processing_class, self.accelerator
            )

        # Self-training state
        if args.soft_pseudo_labels and self.model.config.num_labels < 2:
            raise ValueError(
                f"`soft_pseudo_labels`=True needs a classifier with >= 2 labels, got `num_labels`="
                f"{self.model.config.num_labels}."
            )
        if args.pseudo_label_top_k > self.model.config.num_labels:
            raise ValueError(
                f"`pseudo_label_top_k` must be at most the model's {self.model.config.num_labels} classes, got "
                f"{args.pseudo_label_top_k}."
            )
        self._user_optimizers = optimizers[0] is not None
        self._initial_state = None
        if args.self_training_rounds > 0 and (args.student_init == "reset" or args.first_teacher == "embeddings"):
            self._initial_state = self._copy_state()
        counts = np.bincount(self.labeled_dataset["labels"], minlength=self.model.config.num_labels)
        self.class_prior = counts / counts.sum()
        self.current_round = 0
        self.self_training_phase = None
        self.best_round = None
        self.self_training_history: list[dict] = []
        # Generators (e.g. an unlabeled sampler's) saved per process with every checkpoint: see checkpointing.py.
        self.checkpointed_rngs: dict = {}
        self._round_record, self._round_loss_sum, self._pseudo_labels_file = None, 0.0, None

    # ---- Construction helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _resolve_args(args, model) -> SemiSupervisedConfig:
        if args is None:
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
            return SemiSupervisedConfig(output_dir=f"{os.path.basename(str(name).rstrip('/')) or 'model'}-semisup")
        if not isinstance(args, SemiSupervisedConfig):
            values = {k: v for k, v in args.to_dict().items() if k in SemiSupervisedConfig.__dataclass_fields__}
            values = {k: v for k, v in values.items() if SemiSupervisedConfig.__dataclass_fields__[k].init}
            values.pop("push_to_hub_token", None)
            return SemiSupervisedConfig(**values)
        return args

    @staticmethod
    def _default_consistency_weight(unlabeled_dataset, tokenizer, compute_loss_func, num_labels: int) -> float:
        """`consistency_weight` when unset: on wherever the pool and the trainer allow it (see `SemiSupervisedConfig`).
        The consistency sampler reshuffles a `Dataset` (not a stream), token dropout needs a tokenizer that can pad, the
        consistency loss computes the supervised loss itself, and a regression head has no distribution to keep."""
        allowed = (
            isinstance(unlabeled_dataset, datasets.Dataset)
            and len(unlabeled_dataset) > 0
            and getattr(tokenizer, "pad_token_id", None) is not None
            and compute_loss_func is None
            and num_labels >= 2
        )
        return DEFAULT_CONSISTENCY_WEIGHT if allowed else 0.0

    @staticmethod
    def _create_model(name: str, train_dataset, args) -> PreTrainedModel:
        init_kwargs = dict(args.model_init_kwargs or {})
        config = AutoConfig.from_pretrained(name, **file_location_kwargs(init_kwargs))
        return load_classifier(name, init_kwargs, **head_label_kwargs(config, train_dataset, args.label_column))

    @staticmethod
    def _prepare_unlabeled(unlabeled_dataset, prepare, args):
        name = "unlabeled set (`unlabeled_dataset`)"
        if isinstance(unlabeled_dataset, datasets.IterableDataset):
            stream_args = {k: prepare[k] for k in ("text_column", "max_length")}
            return prepare_stream(unlabeled_dataset, prepare["tokenizer"], name=name, **stream_args), None
        if unlabeled_dataset is None or (
            args.self_training_rounds == 0 and args.consistency_weight == 0 and not len(unlabeled_dataset)
        ):
            return None, None
        cache_dir = os.path.join(args.output_dir, PSEUDO_LABELS_DIR, "cache")
        return prepare_dataset(
            unlabeled_dataset, name=name, labels="hide", add_length=True, cache_dir=cache_dir, **prepare
        )

    @staticmethod
    def _prepare_eval(eval_dataset, prepare):
        if isinstance(eval_dataset, dict):
            return {
                key: prepare_dataset(value, name=f"eval set {key!r} (`eval_dataset`)", **prepare)[0]
                for key, value in eval_dataset.items()
            }
        return prepare_dataset(eval_dataset, name="eval set (`eval_dataset`)", **prepare)[0]

    def _copy_state(self) -> dict[str, torch.Tensor]:
        # A PEFT base is frozen: the adapter and head are the whole state, a fraction of the model's size.
        if is_peft_model(self.model):
            return trainable_state(self.model)
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def _load_state(self, state: dict[str, torch.Tensor]):
        if is_peft_model(self.model):
            load_trainable_state(self.model, state)
        else:
            self.model.load_state_dict(state)

    # ---- Raw-text evaluation and prediction -------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """[`~transformers.Trainer.evaluate`], on raw-text datasets too (tokenized and label-mapped as in `__init__`)."""
        eval_dataset = self._prepare_raw(eval_dataset, "eval set (`eval_dataset`)", labels="train")
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """[`~transformers.Trainer.predict`], on raw-text datasets too; a label column, if any, gives metrics."""
        test_dataset = self._prepare_raw(test_dataset, "test set (`test_dataset`)", labels="keep")
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def _prepare_raw(self, dataset, name: str, labels: str):
        # A dict of eval sets comes back here one set at a time, through `Trainer.evaluate`.
        if not isinstance(dataset, datasets.Dataset) or is_tokenized(dataset):
            return dataset
        return prepare_dataset(dataset, name=name, labels=labels, **self._prepare_kwargs())[0]

    def _prepare_kwargs(self) -> dict:
        """What `prepare_dataset` needs from the trainer: the tokenizer, the columns, the model's classes, the length."""
        return dict(
            tokenizer=self.processing_class,
            text_column=self.args.text_column,
            label_column=self.args.label_column,
            label2id=self.model.config.label2id,
            num_labels=self.model.config.num_labels,
            max_length=self.args.max_length,
        )

    # ---- Consistency hooks ------------------------------------------------------------------------------------------
    @property
    def loss_is_scaled_for_ga(self) -> bool | None:
        # The consistency loss normalizes both terms over the whole accumulated batch itself.
        return True if getattr(self, "consistency", None) is not None else None

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.consistency is not None and batch_samples:
            self.consistency.prepare_step(
                batch_samples, self.model, self.state.global_step, self.current_round, device
            )
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        soft_targets = pop_soft_targets(inputs)  # only rounds with soft pseudo-labels carry them
        batch = inputs.pop(CONSISTENCY_KEY, None)
        if batch is not None:
            return self.consistency.loss(
                model, inputs, batch, return_outputs=return_outputs, soft_targets=soft_targets
            )
        if soft_targets is None:  # evaluation, or hard labels
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return self._soft_label_loss(model, inputs, soft_targets, return_outputs)

    def _soft_label_loss(self, model, inputs, soft_targets, return_outputs=False):
        """
        The mean over the micro-batch's rows of `weight * CE(soft target)`: the hard path's per-batch mean, which the
        Trainer then divides by the gradient accumulation steps.
        """
        inputs = {k: v for k, v in inputs.items() if k != "labels"}  # the model's own (hard) loss is not wanted
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        targets, weights = soft_targets
        losses = soft_cross_entropy(logits, targets, weights, self.args.label_smoothing_factor)
        loss = losses.sum() / max(len(losses), 1)
        return (loss, outputs) if return_outputs else loss

    def _set_signature_columns_if_needed(self):
        # Soft targets travel as dataset columns the model's forward does not take: `remove_unused_columns` must keep
        # them for `compute_loss`, which pops them (trl's trainers extend the signature columns the same way).
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in SOFT_TARGET_COLUMNS if c not in self._signature_columns]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Only training logs (they carry "loss") fold the metrics in: every process logs those at the same step.
        if self.consistency is not None and "loss" in logs:
            logs.update(self.consistency.pop_metrics())
        # Each round is a new `Trainer.train()`, whose step counter starts again at 0: log at the run's step (the
        # earlier rounds' steps added) so that the rounds follow each other on TensorBoard's and W&B's x axis instead
        # of being drawn over each other. Only the logs see it: checkpoints and resume count the round's own steps.
        round_step = self.state.global_step
        self.state.global_step = round_step + self._logged_step_offset()
        try:
            super().log(logs, start_time)
        finally:
            self.state.global_step = round_step

    def _logged_step_offset(self) -> int:
        """The optimizer steps of the rounds before the current one: what [`log`] adds to the round's step."""
        return sum(r.get("train_steps", 0) for r in self.self_training_history if r["round"] < self.current_round)

    # ---- Round loop ---------------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """
        Round 0 trains on the labeled set; each later round pseudo-labels the pool with the current model and trains a
        student on labeled + selected rows. Returns the last round's [`~transformers.trainer_utils.TrainOutput`].

        `resume_from_checkpoint=True` resumes from the latest saved state under `output_dir`: a Trainer checkpoint of
        any round, the end of a labeling pass, or the end of a round. Finished rounds are skipped and an interrupted
        round reuses its saved pseudo-labels, so the run ends with the history and (on CPU) the model of an
        uninterrupted one. A path resumes from that folder instead.
        """
        self.self_training_history = []
        self.best_round, self._best_metric, self._best_state, self._previous_state = None, None, None, None
        self._model_round = None
        resumed, resumed_dir = self._resume(resume_from_checkpoint)
        if resumed is not None and resumed.phase == "done":
            self._load_best_round()
            return TrainOutput(**resumed.train_output)

        output = None
        for round_ in range(resumed.round if resumed else 0, self.args.self_training_rounds + 1):
            self.current_round = round_
            here = resumed if resumed is not None and resumed.round == round_ else None
            record = self._round_record = {"round": round_, "threshold": None}  # set by a round's selection
            self._pseudo_labels_file = None
            if round_ == 0:
                self.train_dataset = self.labeled_dataset
                record["num_pseudo_labels"] = 0
                record["pseudo_label_class_counts"] = {str(n): 0 for n in self.model.config.id2label.values()}
                record["collapse_alarm"] = False
            else:
                if here is not None and here.phase == "fitting":
                    self._pseudo_labels_file = here.pseudo_labels_file
                    path = os.path.join(self.args.output_dir, here.pseudo_labels_file)
                    pseudo_labels = load_pseudo_labels(path, len(self.unlabeled_dataset))
                else:
                    pseudo_labels = self._label_and_select()
                    self._save_pseudo_labels(pseudo_labels)
                self.train_dataset = self._pseudo_labeled_train_set(record, pseudo_labels)
                self._start_student()
            record["num_train_examples"] = len(self.train_dataset)

            self.self_training_phase = "fitting"
            checkpoint = resumed_dir if here is not None and here.step > 0 else None
            self._round_loss_sum = here.loss_sum if checkpoint is not None else 0.0
            self._seed_round(round_)
            max_steps, epochs = self.args.max_steps, self.args.num_train_epochs
            self.args.max_steps = self.args.round_max_steps(
                len(self.train_dataset), self.accelerator.num_processes, round_=round_
            )
            self.args.num_train_epochs = self.args.round_epochs(round_)
            if self.args.max_steps != max_steps:
                logger.info(
                    f"Round {round_}: {self.args.num_train_epochs:g} epochs of {len(self.train_dataset)} examples are "
                    f"fewer than `min_steps_per_round`={self.args.min_steps_per_round} optimizer steps: training "
                    f"{self.args.max_steps} steps."
                )
            try:
                output = super().train(
                    resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
                )
            finally:
                self.args.max_steps, self.args.num_train_epochs = max_steps, epochs
            check_finite_model(self.model, f"Round {round_}, end of training")
            loss_sum = self._round_loss_sum
            record["train_loss"] = output.training_loss if loss_sum is None else loss_sum / max(output.global_step, 1)
            record["train_steps"] = output.global_step
            if self.eval_dataset is not None:
                record.update(deterministic_metrics(self.evaluate(ignore_keys=ignore_keys_for_eval)))
            record = synchronize_record(self.accelerator, record)

            stop = self._rollback_if_worse(record)
            if not stop:
                self._track_best_round(record)
            self._model_round = round_ - 1 if stop else round_
            self._end_round(record)
            self._save_round_end(output, done=stop or round_ == self.args.self_training_rounds)
            if stop:
                break

        self._load_best_round()
        return output

    def _start_student(self):
        # The initial state is also kept for the prototype teacher, so its presence does not mean `reset`.
        if self.args.student_init == "reset":
            self._load_state(self._initial_state)
        if not self._user_optimizers:
            self.optimizer, self.lr_scheduler = None, None
        self.model_wrapped = self.model  # a fresh DDP wrapper for the new optimizer

    def _seed_round(self, round_: int):
        # Each round starts from its own seed, so its training depends only on its inputs, never on how much randomness
        # the rounds before it used: a run resumed at a round boundary then matches an uninterrupted one.
        seed = self.args.seed + round_
        enable_full_determinism(seed) if self.args.full_determinism else set_seed(seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = gathered_loss(loss, self.accelerator)
        if not math.isfinite(value):
            self._stop_on_non_finite_loss(value)
        if self._round_loss_sum is not None:
            self._round_loss_sum += value
        return loss

    def _stop_on_non_finite_loss(self, value: float):
        step = self.state.global_step + 1
        message = (
            f"Round {self.current_round}: the training loss is {value} at step {step} (of {self.state.max_steps}). "
            "Training stopped before this step's update, so no checkpoint or model holds non-finite weights. Lower "
            "`learning_rate`, set `max_grad_norm`, or check the inputs of this step."
        )
        logger.error(message)
        record = {**(self._round_record or {"round": self.current_round})}
        record.update(stopped="non_finite_loss", stopped_at_step=step)
        self.self_training_history.append(record)
        self._write_history()
        raise NonFiniteError(message)

    def _get_output_dir(self, trial) -> str:
        # Checkpoints of different rounds must not overwrite each other: each round saves under its own folder.
        output_dir = super()._get_output_dir(trial)
        if self.args.self_training_rounds == 0:
            return output_dir
        return os.path.join(output_dir, f"round-{self.current_round}")
