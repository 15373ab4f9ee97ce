"""
The round loop of a self-training run, over one [`~hf_semisup.state.RunState`]:

    round 0:   fit the labeled set                                        -> end the round
    round r:   label the pool (teacher) -> select (rule) -> student's set -> fit -> end the round

Ending a round records it (history, logs, `self_training_history.json`), applies the guard rails (rollback to the
previous round when the eval metric got worse), tracks the best round, and saves the model the next round starts from.
A resumed run restores the state and the weights it needs and enters the loop where it stopped: a round whose labeling
pass was saved reuses it, a round stopped mid-fit continues from its Trainer checkpoint.

The loop knows nothing of models: its trainer (a [`RoundHost`], [`SemiSupervisedTrainer`] for real) fits, evaluates
and moves weights; teachers (`teachers.py`) and selection rules (`selection.py`) come from their registries.
"""

import dataclasses
import logging
import os
from typing import Protocol

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from transformers.trainer_utils import TrainOutput

from .callbacks import eval_metric_key
from .checkpointing import (
    load_generator_states,
    load_selection,
    load_state,
    prune_round_ends,
    remove_round_checkpoints,
    resume_point,
    save_selection,
    saving_state,
    write_json_atomic,
)
from .guards import check_collapse
from .outputs import (
    HISTORY_NAME,
    pseudo_label_table_path,
    round_dir,
    round_end_dir,
    selection_path,
    stream_train_cache,
)
from .pseudo_labeling import write_pseudo_label_table
from .selection import SELECTION_RULES, Selection, SelectionContext, apply_rule, estimate_class_prior
from .state import RunState
from .student import empty_round_record, selection_record, student_train_set
from .teacher_choice import STOP
from .teachers import LabelingContext, check_teacher_output, teacher_for_round


logger = logging.getLogger(__name__)


class RoundHost(Protocol):
    """What the loop asks of its trainer. [`SemiSupervisedTrainer`] is one; the loop's tests use a stub."""

    args: object  # the SemiSupervisedConfig
    accelerator: object  # num_processes, process_index, is_local_main_process, wait_for_everyone(), reduce(), device
    data_collator: object
    processing_class: object
    labeled_dataset: object  # tokenized, with integer `labels`
    unlabeled_dataset: object  # tokenized
    unlabeled_source: object  # as given, row for row
    unlabeled_gold_labels: np.ndarray | None  # the pool's hidden labels, for diagnostics only
    eval_dataset: object
    class_names: list[str]
    class_prior: np.ndarray  # the labeled set's class shares
    checkpointed_rngs: dict

    def labeling_model(self): ...
    # A copy of the model from its initial weights, trained on `train_set` as round 0 trains; for teachers that cross-fit.
    def fit_copy(self, train_set): ...
    def start_student(self, round_: int): ...
    # Trains the round; adds each optimizer step's loss to its run state's `loss_sum` (unless that is `None`).
    def fit_round(self, round_: int, train_set, checkpoint: str | None, **train_kwargs) -> TrainOutput: ...
    def evaluate_round(self, ignore_keys=None) -> dict: ...
    def copy_weights(self): ...
    def load_weights(self, weights): ...
    def save_round_model(self, directory: str): ...
    def load_round_model(self, directory: str): ...
    def keep_best_round(self, round_: int, metric: float, directory: str | None): ...
    def round_event(self, event: str, **kwargs): ...


class RoundLoop:
    """Runs a host's rounds over `run` (see the module's docstring)."""

    def __init__(self, host: RoundHost, run: RunState):
        self.host, self.run = host, run

    @property
    def args(self):
        return self.host.args

    @property
    def saves_state(self) -> bool:
        return self.args.self_training_rounds > 0 and self.args.save_strategy != "no"

    # ---- The loop -------------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, **train_kwargs) -> TrainOutput:
        """All rounds, from the start or (`resume_from_checkpoint`) from a save; the last round's `TrainOutput`."""
        run, host = self.run, self.host
        run.start_over()
        run.seed = self.args.seed
        checkpoint = self.resume(resume_from_checkpoint)
        host.round_event("on_rounds_begin", run=run)
        output = TrainOutput(**run.train_output) if run.phase == "done" else None
        while run.phase != "done":
            output = self.run_round(checkpoint, train_kwargs)
            checkpoint = None
        self.load_best_round()
        host.round_event("on_rounds_end", run=run)
        return output

    def run_round(self, checkpoint: str | None, train_kwargs: dict) -> TrainOutput:
        run, host, args = self.run, self.host, self.args
        round_ = run.round
        record = run.record = {"round": round_, "threshold": None}  # the threshold is set by a round's selection
        host.round_event("on_round_begin", run=run)
        if round_ == 0:
            train_set = host.labeled_dataset
            record.update(empty_round_record(host.class_names))
        else:
            train_set = self.student_set(round_, record)
            if train_set is None:
                return self.stop_before_fitting(record, run.teacher_notes[STOP])
            host.start_student(round_)
        record["num_train_examples"] = len(train_set) if hasattr(train_set, "__len__") else None

        run.phase = "fitting"
        output = host.fit_round(round_, train_set, checkpoint, **train_kwargs)
        loss_sum = run.loss_sum
        record["train_loss"] = output.training_loss if loss_sum is None else loss_sum / max(output.global_step, 1)
        record["train_steps"] = output.global_step
        record.update(host.evaluate_round(train_kwargs.get("ignore_keys_for_eval")))
        record = run.record = synchronize_record(host.accelerator, record)

        stop = self.rollback_if_worse(record)
        if not stop:
            self.track_best_round(record)
        run.model_round = round_ - 1 if stop else round_
        self.end_round(record, output, done=stop or round_ == args.self_training_rounds)
        return output

    @property
    def teacher_stops(self) -> bool:
        """Whether the round's teacher ended the run (see [`stop_before_fitting`])."""
        return bool((self.run.teacher_notes or {}).get(STOP))

    def stop_before_fitting(self, record: dict, reason: str) -> TrainOutput:
        """End the run in round `record["round"]` before its student trains: the model stays the teacher's."""
        run = self.run
        previous = run.history[-1]
        record["stopped"] = reason
        run.model_round = record["round"] - 1
        output = TrainOutput(previous["train_steps"], previous["train_loss"], {"train_loss": previous["train_loss"]})
        logger.warning(
            f"Round {record['round']}: {reason.replace('_', ' ')}: no teacher labels better than the round-"
            f"{run.model_round} model (see `first_teacher_evidence` in the history); the run keeps that model."
        )
        self.end_round(record, output, done=True)
        return output

    # ---- Label and select -----------------------------------------------------------------------------------------
    def student_set(self, round_: int, record: dict):
        """
        Round `round_`'s student train set: the teacher labels the pool (or the round's saved pass is read back), the
        rule selects, `record` gets what was kept, and the kept rows join the labeled ones. `None` when the teacher
        ends the run instead (`LabelingContext.notes["stop"]`).
        """
        host, args = self.host, self.args
        predictions, selection = self.pseudo_labels(round_)
        self.record_selection(record, predictions, selection)
        if self.teacher_stops:
            return None
        return student_train_set(
            host.labeled_dataset,
            host.unlabeled_dataset,
            predictions,
            selection,
            round_=round_,
            soft=args.soft_pseudo_labels,
            num_labels=len(host.class_names),
            stream_cache=stream_train_cache(args.output_dir, round_),
            write=host.accelerator.is_local_main_process,
            main_process_first=args.main_process_first,
        )

    def pseudo_labels(self, round_: int):
        """Round `round_`'s `(predictions, selection)`: the teacher's labeling pass and what the rule keeps of it."""
        run, args = self.run, self.args
        if run.phase == "fitting" and run.pseudo_labels_file is not None:  # resumed after the labeling pass
            return self.restore_selection(round_)
        run.phase = "labeling"
        labeling = self.labeling_context(round_)
        predictions = teacher_for_round(args.first_teacher, round_).label(labeling)
        check_teacher_output(predictions, labeling.pool, labeling.top_k, round_)
        run.teacher_notes = dict(labeling.notes) or None
        run.phase = "selecting"
        selection = (
            Selection(np.zeros(0, dtype=np.int64), None) if self.teacher_stops else labeling.select(predictions)
        )
        if args.save_pseudo_labels and args.should_save:
            write_pseudo_label_table(pseudo_label_table_path(args.output_dir, round_), predictions, selection.selected)
        self.save_selection(round_, predictions, selection)
        return predictions, selection

    def labeling_context(self, round_: int) -> LabelingContext:
        """What round `round_`'s teacher is given: the model, the data, and the round's selection rule."""
        host, args = self.host, self.args
        context = self.selection_context(round_)
        strategy, num_labels = args.selection_strategy, len(host.class_names)

        def select(predictions) -> Selection:
            if not self.estimates_pool_prior:
                return apply_rule(strategy, predictions, context)
            # The quotas follow the pool's class shares, as this pass estimates them.
            prior = estimate_class_prior(predictions.probabilities(num_labels), host.class_prior)
            selection = apply_rule(strategy, predictions, dataclasses.replace(context, class_prior=prior))
            return dataclasses.replace(selection, class_prior=prior)

        # Soft targets need every class's probability: the pass keeps all of them, sorted, as its top-k.
        full = SELECTION_RULES[strategy].needs_distribution or self.estimates_pool_prior
        return LabelingContext(
            round=round_,
            model=host.labeling_model(),
            pool=host.unlabeled_dataset,
            pool_source=host.unlabeled_source,
            labeled=host.labeled_dataset,
            accelerator=host.accelerator,
            collator=host.data_collator,
            batch_size=args.per_device_eval_batch_size,
            top_k=num_labels if args.soft_pseudo_labels or full else args.pseudo_label_top_k,
            selection_top_k=num_labels if full else 0,
            select=select,
            initial_weights=self.run.weights.get("initial"),
            tokenizer=host.processing_class,
            config=args,
            fit=host.fit_copy,
        )

    @property
    def estimates_pool_prior(self) -> bool:
        """Whether class balance keeps the pool's class shares, estimated from each pass (`class_balance_prior`)."""
        args = self.args
        return args.class_balance and args.class_balance_prior == "pool" and self.host.class_prior is not None

    def selection_context(self, round_: int) -> SelectionContext:
        prior = self.host.class_prior if self.args.class_balance else None
        return SelectionContext(len(self.host.class_names), round_, prior, self.args)

    def record_selection(self, record: dict, predictions, selection):
        host, args = self.host, self.args
        counts = selection_record(
            record,
            predictions,
            selection,
            class_names=host.class_names,
            confidence_threshold=args.confidence_threshold,
            gold=host.unlabeled_gold_labels,
        )
        notes = {k: v for k, v in (self.run.teacher_notes or {}).items() if k != STOP}
        record.update(notes)
        if selection.class_prior is not None:
            record["pool_class_prior"] = {name: float(p) for name, p in zip(host.class_names, selection.class_prior)}
        check_collapse(
            record,
            counts,
            host.class_prior,
            args.collapse_alarm_margin,
            host.class_names,
            args.class_balance,
            pool_prior=selection.class_prior is not None,
        )

    def save_selection(self, round_: int, predictions, selection):
        """Right after a labeling pass: a resumed run reuses it instead of labeling again."""
        run, host, args = self.run, self.host, self.args
        if not self.saves_state:
            return
        path = selection_path(args.output_dir, round_)
        run.phase, run.pseudo_labels_file = "fitting", os.path.relpath(path, args.output_dir)
        probabilities = predictions.probabilities(len(host.class_names)) if args.soft_pseudo_labels else None
        with saving_state(
            round_dir(args.output_dir, round_), run, host.accelerator, args.should_save, host.checkpointed_rngs
        ):
            if args.should_save:
                save_selection(path, round_, predictions, selection, probabilities)

    def restore_selection(self, round_: int):
        host, args = self.host, self.args
        path = os.path.join(args.output_dir, self.run.pseudo_labels_file)
        pool = host.unlabeled_dataset
        predictions, selected, thresholds = load_selection(path, len(pool) if hasattr(pool, "__len__") else None)
        if thresholds is not None:
            return predictions, Selection(selected, *thresholds)
        # Saved before selections were saved whole (and before the pool's prior could be estimated): the rule, a pure
        # function of the pass, gives it again.
        selection = apply_rule(args.selection_strategy, predictions, self.selection_context(round_))
        if not np.array_equal(selection.selected, selected):
            raise ValueError(
                f"Cannot resume from {path}: `selection_strategy`={args.selection_strategy!r} with this run's settings "
                "does not select the rows it saved. Resume with the settings of the interrupted run."
            )
        return predictions, selection

    # ---- End a round ----------------------------------------------------------------------------------------------
    def end_round(self, record: dict, output: TrainOutput, done: bool):
        run, host, args = self.run, self.host, self.args
        round_ = record["round"]
        run.history.append(record)
        run.record = None
        host.round_event("on_round_end", run=run, record=record)
        self.write_history()
        if done:
            run.finish(output._asdict())
        else:
            run.enter_round(round_ + 1)
        if not self.saves_state:
            return
        # The model the next round starts from (or the run ends with), with the history so far.
        directory = round_end_dir(args.output_dir, round_)
        with saving_state(directory, run, host.accelerator, args.should_save, host.checkpointed_rngs):
            host.save_round_model(directory)
        if args.should_save:
            # Keep what a resume needs: this round's model (the teacher, or the rollback target) and the best round's.
            prune_round_ends(args.output_dir, keep={round_, run.best_round})
            if args.save_total_limit is not None:
                remove_round_checkpoints(args.output_dir, range(round_ + 1))

    def write_history(self):
        if self.args.should_save:
            write_json_atomic(os.path.join(self.args.output_dir, HISTORY_NAME), self.run.history)

    # ---- Best round and rollback ----------------------------------------------------------------------------------
    def best_metric_key(self) -> str | None:
        if not self.args.load_best_model_at_end or self.host.eval_dataset is None:
            return None
        return eval_metric_key(self.args)

    def is_better(self, metric: float, best: float) -> bool:
        greater = self.args.greater_is_better
        if greater is None:
            greater = not eval_metric_key(self.args).endswith("loss")
        return metric > best if greater else metric < best

    def track_best_round(self, record: dict):
        run, key = self.run, self.best_metric_key()
        if key is None or self.args.self_training_rounds == 0:  # plain fine-tuning: `Trainer` keeps its best step
            return
        metric = round_metric(record, key)
        if run.best_metric is None or self.is_better(metric, run.best_metric):
            run.best_round, run.best_metric = record["round"], metric
            if record["round"] < self.args.self_training_rounds:  # the last round's model is the final one
                run.weights["best"] = self.host.copy_weights()

    def load_best_round(self):
        run, host = self.run, self.host
        if run.best_round is None:
            return
        if run.best_round != run.model_round and run.weights.get("best") is not None:
            logger.info(f"Loading the model of round {run.best_round}, the best by `{self.best_metric_key()}`.")
            host.load_weights(run.weights["best"])
        best_end = round_end_dir(self.args.output_dir, run.best_round)
        host.keep_best_round(run.best_round, run.best_metric, best_end if os.path.isdir(best_end) else None)

    def rollback_if_worse(self, record: dict) -> bool:
        """With `rollback_on_worse_eval`: if this round's eval metric is worse than the previous round's, go back."""
        run = self.run
        if not self.args.rollback_on_worse_eval:
            return False
        key = eval_metric_key(self.args)
        metric = round_metric(record, key)
        previous = run.history[-1] if run.history else None
        if previous is not None and self.is_better(previous[key], metric):
            logger.warning(
                f"Round {record['round']}: `{key}` got worse ({previous[key]:.6g} in round {previous['round']}, now "
                f"{metric:.6g}). Going back to the model of round {previous['round']} and stopping "
                "(`rollback_on_worse_eval`)."
            )
            self.host.load_weights(run.weights["previous"])
            record.update(rolled_back_to_round=previous["round"], stopped="eval_metric_worse")
            return True
        run.weights["previous"] = self.host.copy_weights()
        return False

    # ---- Resume ---------------------------------------------------------------------------------------------------
    def resume(self, resume_from_checkpoint) -> str | None:
        """
        Restore the run from the save `resume_from_checkpoint` asks for (see `checkpointing.resume_point`), with the
        models it needs; returns the Trainer checkpoint the resumed round continues from, if it stopped mid-fit.
        """
        run, host, args = self.run, self.host, self.args
        found = resume_point(
            args.output_dir, resume_from_checkpoint, rounds=args.self_training_rounds, should_save=args.should_save
        )
        if found is None:
            return None
        directory, saved, plain = found
        if saved.phase != "done" and saved.round > args.self_training_rounds:
            raise ValueError(
                f"Cannot resume from {directory}: it stopped in round {saved.round}, but this run has "
                f"`self_training_rounds`={args.self_training_rounds}. Resume with the interrupted run's settings."
            )
        run.restore(saved)
        run.seed = args.seed  # what the states this run saves say
        if plain:  # a Trainer checkpoint of plain fine-tuning: nothing of ours to restore
            return directory
        logger.info(f"Resuming self-training from {directory}: round {saved.round}, {saved.phase}, step {saved.step}.")
        if saved.seed != args.seed:
            logger.warning(
                f"The checkpoint was saved by a run with seed {saved.seed}, this one has `seed`={args.seed}: the "
                "result will differ from an uninterrupted run."
            )
        finished = saved.round if saved.phase == "done" else saved.round - 1
        run.model_round = run.history[-1].get("rolled_back_to_round", finished) if run.history else finished
        if run.best_round is not None and run.best_round != run.model_round:
            self.load_round_end(run.best_round)
            run.weights["best"] = host.copy_weights()
        # The last round's model: the next round's teacher or first student, the rollback target, or the final model.
        # A Trainer checkpoint holds the student's weights itself.
        if finished >= 0 and (saved.step == 0 or args.rollback_on_worse_eval):
            self.load_round_end(finished)
            if args.rollback_on_worse_eval:
                run.weights["previous"] = host.copy_weights()
        load_generator_states(directory, host.checkpointed_rngs, args.process_index)
        return directory if saved.step > 0 else None

    def load_round_end(self, round_: int):
        directory = round_end_dir(self.args.output_dir, round_)
        if load_state(directory) is None:
            raise ValueError(f"Cannot resume: the model of the end of round {round_} ({directory}) is missing.")
        self.host.load_round_model(directory)


def round_metric(record: dict, key: str) -> float:
    if key not in record:
        raise KeyError(f"`metric_for_best_model`={key!r} is not among the eval metrics {sorted(record)}.")
    return record[key]


def synchronize_record(accelerator, record: dict) -> dict:
    """
    The same round record on every process. Pseudo-label counts and eval metrics already agree (they come from
    gathered predictions), but `Trainer` leaves in `train_loss` the local loss since the last logging step, and
    timings are per process: average the loss, then take the main process's record.
    """
    if accelerator.num_processes == 1:
        return record
    loss = torch.tensor(float(record["train_loss"]), dtype=torch.float64, device=accelerator.device)
    record["train_loss"] = accelerator.reduce(loss, reduction="mean").item()
    return broadcast_object_list([record])[0]
