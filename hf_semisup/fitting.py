"""
How the trainer fits and scores a round, as plain functions of the trainer: a round's length (epochs, or
`min_steps_per_round` steps), a fit finished by a checkpoint of its last step, the evaluation of a plain run, a copy of
the model trained on a subset (for teachers that cross-fit), and the stop on a non-finite loss.
"""

import contextlib
import copy
import logging
import os
import tempfile

from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerState
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, TrainOutput, set_seed

from .checkpointing import write_json_atomic
from .guards import NonFiniteError
from .outputs import HISTORY_NAME, TRAINER_STATE_NAME
from .state import load_weights


logger = logging.getLogger(__name__)


@contextlib.contextmanager
def round_length(args, round_: int, num_examples: int, world_size: int):
    """
    Within the block, `args` trains round `round_`'s length on `num_examples` rows (`round_max_steps`, `round_epochs`);
    restored after it.
    """
    max_steps, epochs = args.max_steps, args.num_train_epochs
    args.max_steps = args.round_max_steps(num_examples, world_size, round_=round_)
    args.num_train_epochs = args.round_epochs(round_)
    if args.max_steps != max_steps:
        logger.info(
            f"Round {round_}: {args.num_train_epochs:g} epochs of {num_examples} examples are fewer than "
            f"`min_steps_per_round`={args.min_steps_per_round} optimizer steps: training {args.max_steps} steps."
        )
    try:
        yield args
    finally:
        args.max_steps, args.num_train_epochs = max_steps, epochs


def fitted_checkpoint(trainer, checkpoint: str) -> TrainOutput | None:
    """
    The round's fit, when `checkpoint` is its last step (the run stopped after it, in the round's evaluation or save),
    loaded into `trainer`: `Trainer.train` resumed there would train a step more unless the step ends an epoch. `None`
    otherwise.
    """
    saved = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
    loss_sum = trainer.run_state.loss_sum
    if loss_sum is None or saved.max_steps <= 0 or saved.global_step < saved.max_steps:
        return None
    trainer._load_from_checkpoint(checkpoint)
    trainer.state = saved
    loss = loss_sum / max(saved.global_step, 1)
    return TrainOutput(saved.global_step, loss, {"train_loss": loss, "epoch": saved.epoch})


def evaluate_silently(trainer, ignore_keys=None) -> dict:
    """
    `trainer`'s metrics on its eval set(s), as `evaluate()` names them, from an evaluation that no log entry or callback
    sees: a plain run logs what `Trainer` logs.
    """
    sets = trainer.eval_dataset if isinstance(trainer.eval_dataset, dict) else {None: trainer.eval_dataset}
    metrics = {}
    for name, dataset in sets.items():
        output = trainer.evaluation_loop(
            trainer.get_eval_dataloader(dataset),
            description="Evaluation",
            prediction_loss_only=True if trainer.compute_metrics is None else None,
            ignore_keys=ignore_keys,
            metric_key_prefix="eval" if name is None else f"eval_{name}",
        )
        metrics.update(output.metrics)
    metrics["epoch"] = trainer.state.epoch
    return metrics


def fit_copy(trainer, train_set):
    """
    A copy of `trainer`'s model from its initial weights, trained on `train_set` (tokenized, with `labels`) for round 0's
    length with its optimizer settings, by a plain `Trainer` that saves, logs and reports nothing (and adds no
    consistency loss); `trainer`'s model, optimizer and state are left alone.
    """
    model = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model))
    load_weights(model, trainer.run_state.weights["initial"])
    args = copy.copy(trainer.args)
    args.max_steps = trainer.args.round_max_steps(len(train_set), trainer.accelerator.num_processes, round_=0)
    args.num_train_epochs = trainer.args.round_epochs(0)
    args.save_strategy, args.eval_strategy = SaveStrategy.NO, IntervalStrategy.NO
    args.logging_strategy, args.report_to, args.disable_tqdm = IntervalStrategy.NO, [], True
    args.load_best_model_at_end, args.push_to_hub = False, False
    set_seed(trainer.args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        args.output_dir = scratch
        copy_trainer = Trainer(model, args, data_collator=trainer.data_collator, train_dataset=train_set)
        copy_trainer.remove_callback(PrinterCallback)
        copy_trainer.remove_callback(ProgressCallback)
        copy_trainer.train()
    return copy_trainer.model


def non_finite_loss_error(trainer, value: float) -> NonFiniteError:
    """
    The error that stops `trainer` at a non-finite loss `value`, before the step's update; the round's record (marked
    `stopped: non_finite_loss`) is added to the history, written, and the run's end is announced to the callbacks.
    """
    step, run = trainer.state.global_step + 1, trainer.run_state
    message = (
        f"Round {run.round}: the training loss is {value} at step {step} (of {trainer.state.max_steps}). Training "
        "stopped before this step's update, so no checkpoint or model holds non-finite weights. Lower "
        "`learning_rate`, set `max_grad_norm`, or check the inputs of this step."
    )
    logger.error(message)
    run.history.append({**(run.record or {"round": run.round}), "stopped": "non_finite_loss", "stopped_at_step": step})
    if trainer.args.should_save:
        write_json_atomic(os.path.join(trainer.args.output_dir, HISTORY_NAME), run.history)
    trainer.round_event("on_rounds_end", run=run)  # the run ends here: the card's facts follow
    return NonFiniteError(message)
