import logging
import math
import os

import datasets
import torch
from transformers import DataCollatorWithPadding, PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, enable_full_determinism, set_seed

from .adapters import prepare_peft_model
from .augment import build_augmentation
from .callbacks import ModelCardCallback, RoundLogCallback, call_round_event
from .checkpointing import deterministic_metrics, saving_state
from .compat import guard_hub_kernels, upload_ignoring
from .config import SemiSupervisedConfig
from .consistency import CONSISTENCY_KEY, ConsistencyRegularizer
from .data import is_tokenized, prepare_dataset
from .fitting import evaluate_silently, fit_copy, fitted_checkpoint, non_finite_loss_error, round_length
from .guards import check_finite_model, gathered_loss
from .hub import hub_unreachable_error, save_with_history_and_card
from .inputs import (
    check_self_training_inputs,
    class_names,
    class_prior,
    default_consistency_weight,
    is_plain_run,
    is_sequence_classifier,
    prepare_datasets,
    prepare_kwargs,
    prepare_to_label,
    resolve_args,
    resolve_model,
)
from .metrics import compute_classification_metrics, is_offline
from .model_card import ModelCardFacts, write_model_card
from .outputs import HUB_IGNORE_PATTERNS
from .pseudo_labeling import predict_pool, with_prediction_columns
from .rounds import RoundLoop
from .soft_labels import SOFT_TARGET_COLUMNS, pop_soft_targets, soft_label_loss
from .state import RunState, copy_weights, load_weights
from .teachers import needs_initial_weights
from .validation import check_run


logger = logging.getLogger(__name__)


class SemiSupervisedTrainer(Trainer):
    r"""
    A [`~transformers.Trainer`] for sequence classification that also learns from unlabeled text: iterative
    self-training, and a consistency loss on unlabeled batches.

    Round 0 fits the model on the labeled `train_dataset`. In each of the `args.self_training_rounds` later rounds, a
    teacher labels `unlabeled_dataset`, a selection rule keeps the confident predictions, and a student trains on
    labeled + selected rows and becomes the next teacher (see [`SemiSupervisedConfig`]). The rounds run in
    [`~hf_semisup.rounds.RoundLoop`] over the run's one state, `run_state`; this class is the loop's host: it fits a
    round, evaluates, saves and moves weights. With `args.consistency_weight > 0`, every training step also adds the
    consistency loss of [`~hf_semisup.consistency.ConsistencyRegularizer`].

    Args:
        model (`PreTrainedModel`, `torch.nn.Module`, [`~peft.PeftModel`] or `str`):
            The classifier, or a name or path loaded with `AutoModelForSequenceClassification.from_pretrained` and
            `args.model_init_kwargs` (its head sized and named after the labeled set's classes). A `PeftModel` (loaded
            with `is_trainable=True`) trains its adapter and head; `peft_config` must then be `None`.
        args ([`SemiSupervisedConfig`], *optional*):
            `None` builds a default one writing to `<model name>-semisup`; a plain `TrainingArguments` is converted.
        train_dataset ([`~datasets.Dataset`]):
            The labeled set: raw text (`args.text_column`) or tokenized (`input_ids`), with labels (`args.label_column`)
            as ints or class names.
        eval_dataset ([`~datasets.Dataset`] or `dict[str, Dataset]`, *optional*):
            Evaluated after every round.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizes raw text. Loaded from `model` when it is a name and this is `None`.
        compute_metrics (`Callable`, *optional*):
            Defaults to accuracy and macro-F1.
        callbacks (`list[TrainerCallback]`, *optional*):
            As for `Trainer`; they may also define the round events of `callbacks.py` (`on_round_end`, ...).
        unlabeled_dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`], *optional*):
            The unlabeled pool, raw or tokenized; required when `args.self_training_rounds > 0` or
            `args.consistency_weight > 0`. A label column is never trained on: it feeds `pseudo_label_accuracy`. Rows
            whose text is also labeled are dropped, with a warning. A `Dataset` is tokenized once and memory-mapped (an
            in-memory one under `<output_dir>/pseudo_labels/cache`); an `IterableDataset` as it is read, every round.
        peft_config ([`~peft.PeftConfig`], *optional*):
            Wrap `model` with this adapter (e.g. `LoraConfig(task_type="SEQ_CLS", r=8)`): only the adapter and head
            train, and `student_init="reset"` restarts them each round. `save_model` writes the adapter, or the merged
            model with `args.save_merged_model`.

    Other arguments are those of [`~transformers.Trainer`], in the same order. A save to `output_dir` (not a
    checkpoint) also writes `self_training_history.json` and the model card. Every checkpoint carries the run's state,
    so `train(resume_from_checkpoint=True)` resumes where a run stopped; round `r` is seeded with `args.seed + r`; a
    non-finite loss raises [`NonFiniteError`]. Generators of extensions are checkpointed once registered in
    `checkpointed_rngs`.
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
        args = resolve_args(args, model)
        # A plain run (no rounds, no pool, no consistency loss asked for) takes what `Trainer` takes and does what it
        # does (the README lists the differences); self-training needs labeled `datasets.Dataset`s of a classifier.
        plain = is_plain_run(args, unlabeled_dataset)
        if not plain:
            check_self_training_inputs(model, model_init, train_dataset, eval_dataset, unlabeled_dataset)
        # Unset, `consistency_weight` is chosen once the model and tokenizer are known (below) and written back, so that
        # the card and history say what ran; a config reused for another trainer chooses again.
        choose_consistency = args.consistency_weight is None or args._consistency_weight_chosen
        args._consistency_weight_chosen = choose_consistency
        if choose_consistency:
            args.consistency_weight = None

        # Processing class and model (with `model_init` alone, `Trainer` builds the model: one built here only shows
        # its config, whose label names are aligned with the labeled set's)
        model, processing_class, shown = resolve_model(model, processing_class, model_init, args, train_dataset)
        model_config = getattr(shown, "config", None)

        # PEFT
        model = prepare_peft_model(model, peft_config) if model is not None else None

        # The run's rules, now that the model and the data are known
        if choose_consistency:
            num_labels = getattr(model_config, "num_labels", 0)
            args.consistency_weight = default_consistency_weight(
                unlabeled_dataset, processing_class, compute_loss_func, num_labels
            )
        check_run(
            args,
            model_config=model_config,
            unlabeled_dataset=unlabeled_dataset,
            eval_dataset=eval_dataset,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
        )

        # Datasets: tokenized, label-mapped and checked once, here
        prepared = prepare_datasets(
            args, processing_class, model_config, train_dataset, eval_dataset, unlabeled_dataset, plain=plain
        )
        self.labeled_dataset, eval_dataset = prepared.labeled, prepared.eval
        self.unlabeled_source, self.unlabeled_dataset = prepared.unlabeled_source, prepared.unlabeled
        self.unlabeled_gold_labels = prepared.unlabeled_gold_labels

        # Collator and metrics
        if data_collator is None and processing_class is not None:
            data_collator = DataCollatorWithPadding(processing_class)
        # Accuracy and macro-F1 by default, for a classifier (a plain run of another model keeps `Trainer`'s: the loss).
        default_metrics = compute_metrics is None and (not plain or is_sequence_classifier(shown))
        if default_metrics:
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
        if compute_loss_func is None and is_sequence_classifier(self.model):
            self.model_accepts_loss_kwargs = False
        guard_hub_kernels(self.model, args.use_hub_kernels, offline=is_offline())

        # Consistency
        self.consistency = None
        if args.consistency_weight > 0:
            augmentation = build_augmentation(args, self.processing_class)
            self.consistency = ConsistencyRegularizer(
                args, self.unlabeled_dataset, self.processing_class, self.accelerator, augmentation
            )

        # Self-training state: the loop's (see `state.py`), the classes it balances, and the callbacks that report it
        self.class_names = class_names(model_config)
        self.class_prior = class_prior(self.labeled_dataset, len(self.class_names))
        self._user_optimizers = optimizers[0] is not None
        self.run_state = RunState(seed=args.seed)
        if args.self_training_rounds > 0 and (
            args.student_init == "reset" or needs_initial_weights(args.first_teacher)
        ):
            self.run_state.weights["initial"] = self.copy_weights()
        # Generators (e.g. an unlabeled sampler's) saved per process with every checkpoint: see checkpointing.py.
        self.checkpointed_rngs: dict = {}
        eval_sets = eval_dataset if isinstance(eval_dataset, dict) else {None: eval_dataset}
        self.model_card_facts = ModelCardFacts(
            self.labeled_dataset, self.unlabeled_dataset, eval_sets, default_metrics=default_metrics
        )
        self.add_callback(RoundLogCallback(self))
        self.add_callback(ModelCardCallback(self.model_card_facts))

    # ---- The run's state, as earlier versions named it --------------------------------------------------------------
    @property
    def self_training_history(self) -> list[dict]:
        """One record per finished round (see the README's Diagnostics)."""
        return self.run_state.history

    @property
    def best_round(self) -> int | None:
        """The round whose model was kept by `load_best_model_at_end`, else `None`."""
        return self.run_state.best_round

    @property
    def current_round(self) -> int:
        """The round the run is in (or ended in)."""
        return self.run_state.round

    @property
    def self_training_phase(self) -> str:
        """What the current round does next: `"labeling"`, `"selecting"`, `"fitting"` or `"done"`."""
        return self.run_state.phase

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
        return prepare_kwargs(self.args, self.processing_class, getattr(self.model, "config", None))

    def pseudo_label(
        self, dataset: datasets.Dataset | datasets.IterableDataset | None = None
    ) -> datasets.Dataset | datasets.IterableDataset:
        """
        The current model's prediction for every row of `dataset` (default: the unlabeled set), in order. Call it on
        every process: each labels its share and all return the same result.

        Returns:
            [`~datasets.Dataset`] (or [`~datasets.IterableDataset`] for one): `dataset` with more columns:
            `pseudo_label` (`int`, the argmax class), `confidence` (`float`, the top softmax probability) and, when
            `args.pseudo_label_top_k` is set, `top_k_labels` and `top_k_probabilities`.
        """
        if dataset is None and self.unlabeled_dataset is None:
            raise ValueError("`pseudo_label()` needs a dataset: none was given and there is no `unlabeled_dataset`.")
        if dataset is None:
            source, prepared = self.unlabeled_source, self.unlabeled_dataset
        else:
            config = getattr(self.model, "config", None)
            source, prepared = dataset, prepare_to_label(self.args, self.processing_class, config, dataset)
        self._move_model_to_device(self.model, self.args.device)
        predictions = predict_pool(
            self.model, prepared, self.data_collator, self.accelerator, self.args.per_device_eval_batch_size,
            top_k=self.args.pseudo_label_top_k, desc=f"Pseudo-labeling (round {self.current_round})",
            disable_tqdm=self.args.disable_tqdm,
        )  # fmt: skip
        return with_prediction_columns(source, predictions)

    # ---- Losses and logs ----------------------------------------------------------------------------------------------
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
        return soft_label_loss(model, inputs, soft_targets, self.args.label_smoothing_factor, return_outputs)

    def _set_signature_columns_if_needed(self):
        # Soft targets travel as dataset columns the model's forward does not take: `remove_unused_columns` must keep
        # them for `compute_loss`, which pops them (trl's trainers extend the signature columns the same way).
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in SOFT_TARGET_COLUMNS if c not in self._signature_columns]

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = gathered_loss(loss, self.accelerator)
        if not math.isfinite(value):
            raise non_finite_loss_error(self, value)
        if self.run_state.loss_sum is not None:
            self.run_state.loss_sum += value
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Only training logs (they carry "loss") fold the metrics in: every process logs those at the same step.
        if self.consistency is not None and "loss" in logs:
            logs.update(self.consistency.pop_metrics())
        # Each round is a new `Trainer.train()`, whose step counter starts again at 0: log at the run's step (the
        # earlier rounds' steps added) so that the rounds follow each other on TensorBoard's and W&B's x axis instead
        # of being drawn over each other. Only the logs see it: checkpoints and resume count the round's own steps.
        round_step = self.state.global_step
        self.state.global_step = round_step + self.run_state.logged_step_offset()
        try:
            super().log(logs, start_time)
        finally:
            self.state.global_step = round_step

    # ---- Rounds (the host side of `RoundLoop`) -------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """
        Round 0 trains on the labeled set; each later round pseudo-labels the pool and trains a student on labeled +
        selected rows. Returns the last round's [`~transformers.trainer_utils.TrainOutput`].

        `resume_from_checkpoint=True` resumes from the latest saved state under `output_dir`: a Trainer checkpoint of
        any round, the end of a labeling pass, or the end of a round. Finished rounds are skipped and an interrupted
        round reuses its saved pseudo-labels, so the run ends with the history and (on CPU) the model of an
        uninterrupted one. A path resumes from that folder instead.
        """
        loop = RoundLoop(self, self.run_state)
        return loop.train(resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def labeling_model(self):
        """The model, on its device, for a teacher to label the pool with."""
        self._move_model_to_device(self.model, self.args.device)
        return self.model

    def start_student(self, round_: int):
        if self.args.student_init == "reset":
            self.load_weights(self.run_state.weights["initial"])
        if not self._user_optimizers:
            self.optimizer, self.lr_scheduler = None, None
        self.model_wrapped = self.model  # a fresh DDP wrapper for the new optimizer

    def fit_copy(self, train_set):
        """
        A copy of the model from its initial weights, trained on `train_set` for round 0's length by a plain `Trainer`
        that saves, logs and reports nothing (see [`~hf_semisup.fitting.fit_copy`]); this trainer is left alone. For
        teachers that cross-fit on the labeled set (`first_teacher="auto"`). Call it on every process.
        """
        return fit_copy(self, train_set)

    def fit_round(self, round_: int, train_set, checkpoint: str | None, **train_kwargs) -> TrainOutput:
        """
        `Trainer.train` on `train_set`, seeded for the round, for the round's length (see `round_max_steps`); a run
        without self-training rounds trains exactly what `TrainingArguments` says.
        """
        self.train_dataset = train_set
        # Each round starts from its own seed, so its training depends only on its inputs, never on how much randomness
        # the rounds before it used: a run resumed at a round boundary then matches an uninterrupted one.
        seed = self.args.seed + round_
        enable_full_determinism(seed) if self.args.full_determinism else set_seed(seed)
        if self.args.self_training_rounds == 0:
            return self._fit(checkpoint, **train_kwargs)
        with round_length(self.args, round_, len(train_set), self.accelerator.num_processes):
            return self._fit(checkpoint, **train_kwargs)

    def _fit(self, checkpoint: str | None, **train_kwargs) -> TrainOutput:
        output = fitted_checkpoint(self, checkpoint) if checkpoint is not None else None
        if output is None:
            output = super().train(resume_from_checkpoint=checkpoint, **train_kwargs)
        check_finite_model(self.model, f"Round {self.current_round}, end of training")
        return output

    def evaluate_round(self, ignore_keys=None) -> dict:
        if self.eval_dataset is None:
            return {}
        if self.args.self_training_rounds > 0:
            return deterministic_metrics(self.evaluate(ignore_keys=ignore_keys))
        # Plain fine-tuning logs what `Trainer` logs: the history's metrics come from an evaluation no callback sees.
        return deterministic_metrics(evaluate_silently(self, ignore_keys))

    def copy_weights(self) -> dict[str, torch.Tensor]:
        return copy_weights(self.model)

    def load_weights(self, weights: dict[str, torch.Tensor]):
        load_weights(self.model, weights)

    def save_round_model(self, directory: str):
        self.save_model(directory, _internal_call=True)

    def load_round_model(self, directory: str):
        self._load_from_checkpoint(directory)

    def keep_best_round(self, round_: int, metric: float, directory: str | None):
        # `Trainer` kept the best checkpoint of the last round it trained: say which round's model this is instead.
        self.state.best_metric, self.state.best_model_checkpoint = metric, directory

    def round_event(self, event: str, **kwargs):
        call_round_event(self.callback_handler, event, self.args, self.state, self.control, **kwargs)

    # ---- Checkpoints, saving and the Hub -----------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        run, step = self.run_state, self.state.global_step
        check_finite_model(self.model, f"Round {run.round}, checkpoint at step {step}")
        run.step = step
        directory = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{step}")
        with saving_state(directory, run, self.accelerator, self.args.should_save, self.checkpointed_rngs):
            super()._save_checkpoint(model, trial)

    def _get_output_dir(self, trial) -> str:
        # Checkpoints of different rounds must not overwrite each other: each round saves under its own folder.
        output_dir = super()._get_output_dir(trial)
        if self.args.self_training_rounds == 0:
            return output_dir
        return os.path.join(output_dir, f"round-{self.current_round}")

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """
        Save the model (the adapter with PEFT, or the merged model if `args.save_merged_model`) and tokenizer; outside
        checkpoints also `self_training_history.json` and the model card. Pushes when `args.push_to_hub` is set.
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        save_with_history_and_card(self, output_dir, super().save_model)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """[`~transformers.Trainer.init_hf_repo`], its failure (offline, no token, no right to the repo) in one line."""
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as error:  # `huggingface_hub` and `httpx` errors share no base class short of `Exception`
            raise hub_unreachable_error(error, self.args) from error

    def push_to_hub(self, *args, **kwargs):
        with upload_ignoring(HUB_IGNORE_PATTERNS):
            return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        with upload_ignoring(HUB_IGNORE_PATTERNS):
            return super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, **kwargs):  # fmt: skip
        """
        Write the semi-supervised model card to `output_dir/README.md` (main process only); the arguments are
        [`~hf_semisup.model_card.build_model_card`]'s. `tasks` is ignored: the task is always text classification.
        """
        if self.is_world_process_zero():
            card = dict(language=language, license=license, tags=tags, model_name=model_name)
            write_model_card(self, self.args.output_dir, finetuned_from=finetuned_from, **card, **kwargs)
