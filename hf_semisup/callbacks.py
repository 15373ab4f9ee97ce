"""
Round events for [`~transformers.TrainerCallback`]s, and the callbacks the trainer installs with them.

Besides `Trainer`'s events, the round loop calls, on every callback that has them:

- `on_rounds_begin(args, state, control, run=...)`: once per `train()`, after a resume has restored the run;
- `on_round_begin(args, state, control, run=...)`: before round `run.round` labels the pool (or reuses a saved
  labeling pass) and fits its student;
- `on_round_end(args, state, control, run=..., record=...)`: once the round's `record` is in `run.history`;
- `on_rounds_end(args, state, control, run=...)`: when `train()` returns.

`run` is the trainer's [`~hf_semisup.state.RunState`] (read it; the loop owns it).
"""

from transformers import TrainerCallback


ROUND_EVENTS = ("on_rounds_begin", "on_round_begin", "on_round_end", "on_rounds_end")

# Keys of a round's record logged through `Trainer.log` (TensorBoard, W&B, ...) under another name, beside
# `self_training_round`, `num_pseudo_labels`, `pseudo_label_threshold`, `pseudo_label_accuracy`,
# `pseudo_label_collapse_alarm`, `pseudo_labels_<class>` and (`class_balance_prior="pool"`) `pool_class_prior_<class>`.
LOGGED_AS = {
    "num_confident": "pseudo_label_num_confident",
    "mean_confidence": "pseudo_label_mean_confidence",
    "teacher_pool_accuracy": "teacher_pool_accuracy",
    "num_train_examples": "num_train_examples",
}


def call_round_event(callback_handler, event: str, args, state, control, **kwargs):
    """Call `event` (one of [`ROUND_EVENTS`]) on every callback of a `Trainer`'s handler that defines it."""
    for callback in callback_handler.callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(args, state, control, **kwargs)


def round_logs(record: dict) -> dict[str, float]:
    """The numbers of a round's record as `Trainer.log` takes them (see the README's Diagnostics)."""
    logs = {
        "self_training_round": record["round"],
        "num_pseudo_labels": record["num_pseudo_labels"],
        "pseudo_label_collapse_alarm": float(record.get("collapse_alarm", False)),
    }
    if record["threshold"] is not None:  # a rule without a threshold has none when it kept nothing
        logs["pseudo_label_threshold"] = record["threshold"]
    if record.get("pseudo_label_accuracy") is not None:
        logs["pseudo_label_accuracy"] = record["pseudo_label_accuracy"]
    for name, count in record["pseudo_label_class_counts"].items():
        logs[f"pseudo_labels_{name}"] = count
    for name, share in record.get("pool_class_prior", {}).items():
        logs[f"pool_class_prior_{name}"] = share
    for key, name in LOGGED_AS.items():  # the rest of the record that is one number (round 0 has no teacher)
        if record.get(key) is not None:
            logs[name] = record[key]
    return logs


class RoundLogCallback(TrainerCallback):
    """Logs each round's record through `trainer.log`, so TensorBoard, W&B, ... draw it beside the training logs."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_round_end(self, args, state, control, run=None, record=None, **kwargs):
        if args.self_training_rounds > 0:  # plain fine-tuning logs what `Trainer` logs, its summary last
            self.trainer.log(round_logs(record))


class ModelCardCallback(TrainerCallback):
    """
    Keeps the model card's facts about the run (its `history`, the kept round, the metric that chose it) up to date,
    in the [`~hf_semisup.model_card.ModelCardFacts`] it is given, as setfit's `ModelCardCallback` does.
    """

    def __init__(self, facts):
        self.facts = facts

    def _update(self, args, run):
        self.facts.history = [dict(record) for record in run.history]
        self.facts.best_round = run.best_round
        self.facts.best_metric = eval_metric_key(args) if run.best_round is not None else None

    def on_rounds_begin(self, args, state, control, run=None, **kwargs):
        self._update(args, run)

    def on_round_end(self, args, state, control, run=None, record=None, **kwargs):
        self._update(args, run)

    def on_rounds_end(self, args, state, control, run=None, **kwargs):
        self._update(args, run)


def eval_metric_key(args) -> str:
    """The history key of `metric_for_best_model` (default: the loss), with its `eval_` prefix."""
    metric = args.metric_for_best_model or "loss"
    return metric if metric.startswith("eval_") else f"eval_{metric}"
