"""
The round bookkeeping of [`SemiSupervisedTrainer`]: the history (one record per round, logged and written to
`self_training_history.json`), the best round for `load_best_model_at_end`, and `rollback_on_worse_eval`.
"""

import logging
import os

import torch
from accelerate.utils import broadcast_object_list

from .checkpointing import round_end_dir, write_json_atomic


logger = logging.getLogger(__name__)

HISTORY_NAME = "self_training_history.json"
# Keys of a round's record logged through `Trainer.log` (TensorBoard, W&B, ...) under another name, beside
# `self_training_round`, `num_pseudo_labels`, `pseudo_label_threshold`, `pseudo_label_accuracy`,
# `pseudo_label_collapse_alarm` and `pseudo_labels_<class>`.
LOGGED_AS = {
    "num_confident": "pseudo_label_num_confident",
    "mean_confidence": "pseudo_label_mean_confidence",
    "teacher_pool_accuracy": "teacher_pool_accuracy",
    "num_train_examples": "num_train_examples",
}


class RoundHistoryMixin:
    """Round records and round choice for [`SemiSupervisedTrainer`]: it provides `args`, `model` and `_copy_state`."""

    def _eval_metric_key(self) -> str:
        metric = self.args.metric_for_best_model or "loss"
        return metric if metric.startswith("eval_") else f"eval_{metric}"

    def _best_metric_key(self) -> str | None:
        if not self.args.load_best_model_at_end or self.eval_dataset is None:
            return None
        return self._eval_metric_key()

    def _round_metric(self, record: dict, key: str) -> float:
        if key not in record:
            raise KeyError(f"`metric_for_best_model`={key!r} is not among the eval metrics {sorted(record)}.")
        return record[key]

    def _is_better(self, metric: float, best: float) -> bool:
        greater = self.args.greater_is_better
        if greater is None:
            greater = not self._eval_metric_key().endswith("loss")
        return metric > best if greater else metric < best

    def _track_best_round(self, record: dict):
        key = self._best_metric_key()
        if key is None:
            return
        metric = self._round_metric(record, key)
        if self._best_metric is None or self._is_better(metric, self._best_metric):
            self.best_round, self._best_metric = record["round"], metric
            if record["round"] < self.args.self_training_rounds:
                self._best_state = self._copy_state()

    def _load_best_round(self):
        if self.best_round is None:
            return
        if self.best_round != self._model_round and self._best_state is not None:
            logger.info(f"Loading the model of round {self.best_round}, the best by `{self._best_metric_key()}`.")
            self.model.load_state_dict(self._best_state)
        # `Trainer` kept the best checkpoint of the last round it trained: say which round's model this is instead.
        best_end = round_end_dir(self.args.output_dir, self.best_round)
        self.state.best_metric = self._best_metric
        self.state.best_model_checkpoint = best_end if os.path.isdir(best_end) else None

    def _rollback_if_worse(self, record: dict) -> bool:
        """With `rollback_on_worse_eval`: if this round's eval metric is worse than the previous round's, go back."""
        if not self.args.rollback_on_worse_eval:
            return False
        key = self._eval_metric_key()
        metric = self._round_metric(record, key)
        previous = self.self_training_history[-1] if self.self_training_history else None
        if previous is not None and self._is_better(previous[key], metric):
            logger.warning(
                f"Round {record['round']}: `{key}` got worse ({previous[key]:.6g} in round {previous['round']}, now "
                f"{metric:.6g}). Going back to the model of round {previous['round']} and stopping "
                "(`rollback_on_worse_eval`)."
            )
            self.model.load_state_dict(self._previous_state)
            record.update(rolled_back_to_round=previous["round"], stopped="eval_metric_worse")
            return True
        self._previous_state = self._copy_state()
        return False

    def _end_round(self, record: dict):
        self.self_training_history.append(record)
        logs = {
            "self_training_round": record["round"],
            "num_pseudo_labels": record["num_pseudo_labels"],
            "pseudo_label_collapse_alarm": float(record.get("collapse_alarm", False)),
        }
        if record["threshold"] is not None:  # `"topk"` has none when it kept nothing
            logs["pseudo_label_threshold"] = record["threshold"]
        if record.get("pseudo_label_accuracy") is not None:
            logs["pseudo_label_accuracy"] = record["pseudo_label_accuracy"]
        for name, count in record["pseudo_label_class_counts"].items():
            logs[f"pseudo_labels_{name}"] = count
        for key, name in LOGGED_AS.items():  # the rest of the record that is one number (round 0 has no teacher)
            if record.get(key) is not None:
                logs[name] = record[key]
        self.log(logs)
        self._write_history()

    def _write_history(self):
        if self.args.should_save:
            write_json_atomic(os.path.join(self.args.output_dir, HISTORY_NAME), self.self_training_history)


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
