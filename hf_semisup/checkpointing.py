"""
The self-training state saved with every checkpoint, so an interrupted run resumes exactly where it stopped.

Layout under `output_dir` when `self_training_rounds > 0` and `save_strategy` is not `"no"`:

    round-<r>/checkpoint-<step>/                Trainer checkpoints of round r, each with a self-training state
    round-<r>/self_training_pseudo_labels.npz   the teacher's predictions on the pool and the accepted rows
    round-<r>/self_training_state.json          written right after the labeling pass: round r is ready to fit
    round-<r>/round-end/                        the model at the end of round r, with a state (last and best kept)
    self_training_history.json

A state file is written last in its folder, atomically, and removed before the folder is written again: a folder
without one is an incomplete save and is never resumed from. `train(resume_from_checkpoint=True)` resumes from the
state furthest along the run (round, then phase, then step).

Random generators other than the global ones (e.g. an unlabeled sampler's or token dropout's) are saved per process
when registered in `SemiSupervisedTrainer.checkpointed_rngs`: a `torch.Generator`, a `numpy.random.Generator`, a
`random.Random`, or an object with JSON-serializable `state_dict()` / `load_state_dict()`.
"""

import base64
import contextlib
import dataclasses
import glob
import json
import logging
import os
import random
import shutil
import tempfile

import numpy as np
import torch
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, get_last_checkpoint

from .guards import check_finite_model


logger = logging.getLogger(__name__)

STATE_NAME = "self_training_state.json"
# NumPy arrays: for a million-row pool (400,000 accepted), 15 MB written in 0.04 s, against 36 MB in 1.6 s as JSON;
# with soft pseudo-labels (2 classes), 23 MB against 101 MB in 6.6 s. Runs saved as JSON by earlier versions resume.
PSEUDO_LABELS_NAME = "self_training_pseudo_labels.npz"
RNG_NAME = "self_training_rng_{rank}.json"
TRAINER_STATE_NAME = "trainer_state.json"
ROUND_END_DIR = "round-end"
# Order of the phases within a round; "done" marks a finished run.
PHASES = ("labeling", "selecting", "fitting", "done")
STATE_VERSION = 1
# Timings differ run to run; the history must not.
_SPEED_SUFFIXES = ("_runtime", "_per_second", "_preparation_time")


def write_atomic(path: str, write, mode: str = "w"):
    """
    Call `write(file)` on a temporary file in the same folder and rename it to `path`, so a crash never leaves a
    half-written file.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str):
    """Write text atomically (see [`write_atomic`])."""
    write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path: str, payload):
    """Write JSON atomically (see [`write_text_atomic`])."""
    write_text_atomic(path, json.dumps(payload, indent=2))


def deterministic_metrics(metrics: dict) -> dict:
    """`metrics` without the timing entries (`*_runtime`, `*_per_second`), which change from run to run."""
    return {k: v for k, v in metrics.items() if not k.endswith(_SPEED_SUFFIXES)}


def round_dir(output_dir: str, round_: int) -> str:
    return os.path.join(output_dir, f"round-{round_}")


def round_end_dir(output_dir: str, round_: int) -> str:
    return os.path.join(round_dir(output_dir, round_), ROUND_END_DIR)


@dataclasses.dataclass
class SelfTrainingState:
    r"""
    Where a self-training run stands, saved as `self_training_state.json` in a checkpoint folder.

    Args:
        round (`int`):
            The round this state belongs to.
        phase (`str`):
            What the round does next: `"labeling"` (the teacher labels the pool), `"selecting"`, `"fitting"` (the
            student trains, `step` optimizer steps done), or `"done"` (the run is finished).
        step (`int`, *optional*, defaults to `0`):
            Optimizer steps done in the round (the Trainer's `global_step`).
        history (`list[dict]`):
            The records of the finished rounds, as in `self_training_history.json`.
        loss_sum (`float` or `None`):
            Sum of the round's training losses over its first `step` steps, so the round's `train_loss` covers the
            steps before a resume.
        pseudo_labels_file (`str` or `None`):
            The round's `self_training_pseudo_labels.npz`, relative to `output_dir`.
        best_round, best_metric:
            The best round so far by `metric_for_best_model` (with `load_best_model_at_end`), and its value.
        seed (`int`):
            `args.seed` of the run that saved this state.
        train_output (`dict` or `None`):
            With phase `"done"`: the [`~transformers.trainer_utils.TrainOutput`] that `train()` returned.
    """

    round: int
    phase: str
    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    loss_sum: float | None = 0.0
    pseudo_labels_file: str | None = None
    best_round: int | None = None
    best_metric: float | None = None
    seed: int | None = None
    train_output: dict | None = None

    @property
    def position(self) -> tuple[int, int, int]:
        """Orders states along a run: by round, then phase, then step."""
        return (self.round, PHASES.index(self.phase), self.step)

    def save(self, directory: str):
        write_json_atomic(os.path.join(directory, STATE_NAME), {"version": STATE_VERSION, **dataclasses.asdict(self)})

    @classmethod
    def load(cls, directory: str) -> "SelfTrainingState | None":
        """The state saved in `directory`, or `None` when there is none (an incomplete or foreign checkpoint)."""
        path = os.path.join(directory, STATE_NAME)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            payload = json.load(f)
        version = payload.pop("version", None)
        if version != STATE_VERSION:
            raise ValueError(
                f"{path} has self-training state version {version!r}; this version reads {STATE_VERSION}."
            )
        state = cls(**payload)
        if state.phase not in PHASES:
            raise ValueError(f"{path} has an unknown phase {state.phase!r}; expected one of {PHASES}.")
        return state


def state_directories(output_dir: str) -> list[str]:
    """Every folder under `output_dir` that holds a self-training state."""
    patterns = [
        f"{PREFIX_CHECKPOINT_DIR}-*",  # `self_training_rounds=0` checkpoints directly into output_dir
        "round-*",
        f"round-*/{PREFIX_CHECKPOINT_DIR}-*",
        f"round-*/{ROUND_END_DIR}",
    ]
    found = []
    for pattern in patterns:
        found += glob.glob(os.path.join(glob.escape(output_dir), pattern, STATE_NAME))
    return sorted(os.path.dirname(path) for path in found)


def find_latest_state(output_dir: str) -> tuple[str, SelfTrainingState] | None:
    """The `(folder, state)` furthest along the run under `output_dir`, or `None`."""
    latest = None
    for directory in state_directories(output_dir):
        state = SelfTrainingState.load(directory)
        if state is not None and (latest is None or state.position > latest[1].position):
            latest = (directory, state)
    return latest


def discard_states_after(output_dir: str, position: tuple[int, int, int]):
    """Remove the state files of a run's later saves, so resuming from an earlier one never mixes two futures."""
    for directory in state_directories(output_dir):
        state = SelfTrainingState.load(directory)
        if state is not None and state.position > position:
            logger.info(f"Discarding the self-training state in {directory}: it is later than the resume point.")
            remove_state(directory)


def remove_state(directory: str):
    path = os.path.join(directory, STATE_NAME)
    if os.path.isfile(path):
        os.remove(path)


def prune_round_ends(output_dir: str, keep: set[int]):
    """Delete the round-end models of the rounds not in `keep`."""
    for directory in glob.glob(os.path.join(glob.escape(output_dir), "round-*", ROUND_END_DIR)):
        round_ = os.path.basename(os.path.dirname(directory)).removeprefix("round-")
        if not round_.isdigit() or int(round_) not in keep:
            remove_state(directory)
            shutil.rmtree(directory, ignore_errors=True)


def remove_round_checkpoints(output_dir: str, rounds: range):
    """Delete the Trainer checkpoints of finished rounds: their round-end model supersedes them."""
    for round_ in rounds:
        for directory in glob.glob(
            os.path.join(glob.escape(round_dir(output_dir, round_)), f"{PREFIX_CHECKPOINT_DIR}-*")
        ):
            remove_state(directory)
            shutil.rmtree(directory, ignore_errors=True)


# ---- Pseudo-labels ----------------------------------------------------------------------------------------------------
def save_pseudo_labels(
    path: str,
    round_: int,
    labels: np.ndarray,
    confidences: np.ndarray,
    selected: np.ndarray,
    probabilities: np.ndarray | None = None,
):
    """
    Save the teacher's label and confidence for every pool row, the accepted rows in selection order and, for soft
    pseudo-labels, every row's full distribution, as NumPy arrays (`.npz`).
    """
    arrays = {
        "round": np.asarray(round_, dtype=np.int64),
        "labels": np.asarray(labels, dtype=np.int64),
        "confidences": np.asarray(confidences, dtype=np.float32),
        "selected": np.asarray(selected, dtype=np.int64),
    }
    if probabilities is not None:
        arrays["probabilities"] = np.asarray(probabilities, dtype=np.float32)
    write_atomic(path, lambda f: np.savez(f, **arrays), mode="wb")


def load_pseudo_labels(path: str, pool_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """
    `(labels, confidences, selected, probabilities)` as saved by [`save_pseudo_labels`] (`probabilities` is `None`
    without soft pseudo-labels), checked against the pool's size.
    """
    if path.endswith(".json"):  # written by earlier versions, before the arrays moved to `.npz`
        with open(path) as f:
            payload = json.load(f)
    else:
        with np.load(path) as arrays:
            payload = {key: arrays[key] for key in arrays.files}
    labels = np.asarray(payload["labels"], dtype=np.int64)
    if len(labels) != pool_size:
        raise ValueError(
            f"{path} labels {len(labels)} rows, but the unlabeled set (`unlabeled_dataset`) has {pool_size}: resume "
            "with the same datasets as the interrupted run."
        )
    confidences = np.asarray(payload["confidences"], dtype=np.float32)
    probabilities = payload.get("probabilities")
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float32)
    return labels, confidences, np.asarray(payload["selected"], dtype=np.int64), probabilities


# ---- Random generators ------------------------------------------------------------------------------------------------
def generator_state(generator) -> dict:
    """A JSON-serializable snapshot of a random generator's state."""
    if isinstance(generator, torch.Generator):
        data = generator.get_state().numpy().tobytes()
        return {"type": "torch", "state": base64.b64encode(data).decode("ascii")}
    if isinstance(generator, np.random.Generator):
        return {"type": "numpy", "state": generator.bit_generator.state}
    if isinstance(generator, random.Random):
        version, internal, gauss = generator.getstate()
        return {"type": "python", "state": [version, list(internal), gauss]}
    if hasattr(generator, "state_dict") and hasattr(generator, "load_state_dict"):
        return {"type": "state_dict", "state": generator.state_dict()}
    raise TypeError(
        f"Cannot checkpoint a {type(generator).__name__}: register a torch.Generator, numpy.random.Generator, "
        "random.Random, or an object with state_dict()/load_state_dict()."
    )


def restore_generator_state(generator, saved: dict):
    kind, state = saved["type"], saved["state"]
    if kind == "torch":
        generator.set_state(torch.frombuffer(bytearray(base64.b64decode(state)), dtype=torch.uint8))
    elif kind == "numpy":
        generator.bit_generator.state = state
    elif kind == "python":
        generator.setstate((state[0], tuple(state[1]), state[2]))
    else:
        generator.load_state_dict(state)


def save_generator_states(directory: str, generators: dict, rank: int):
    if generators:
        states = {name: generator_state(generator) for name, generator in generators.items()}
        write_json_atomic(os.path.join(directory, RNG_NAME.format(rank=rank)), states)


def load_generator_states(directory: str, generators: dict, rank: int):
    if not generators:
        return
    path = os.path.join(directory, RNG_NAME.format(rank=rank))
    if not os.path.isfile(path):
        logger.warning(f"No generator states for process {rank} in {directory}: the resumed run may not be exact.")
        return
    with open(path) as f:
        states = json.load(f)
    for name, generator in generators.items():
        if name in states:
            restore_generator_state(generator, states[name])
        else:
            logger.warning(f"The checkpoint {directory} has no state for the generator {name!r}.")


# ---- Trainer side ---------------------------------------------------------------------------------------------------
class SelfTrainingCheckpointMixin:
    """
    Saves the self-training state with every checkpoint and restores it: mixed into
    [`SemiSupervisedTrainer`], whose round loop calls `_save_pseudo_labels` after a labeling pass, `_save_round_end`
    after a round, and `_resume` at the start of `train()`. Overrides [`~transformers.Trainer._save_checkpoint`] to
    refuse non-finite weights and to write the state after the Trainer's files.
    """

    @property
    def _saves_self_training_state(self) -> bool:
        return self.args.self_training_rounds > 0 and self.args.save_strategy != "no"

    def _state(self, round_: int, phase: str, step: int = 0, **fields) -> SelfTrainingState:
        return SelfTrainingState(
            round=round_,
            phase=phase,
            step=step,
            history=self.self_training_history,
            best_round=self.best_round,
            best_metric=self._best_metric,
            seed=self.args.seed,
            **fields,
        )

    @contextlib.contextmanager
    def _saving_state(self, directory: str, state: SelfTrainingState):
        """Write a folder, then its self-training state last: a folder without one is never resumed from."""
        if self.args.should_save:
            remove_state(directory)
        yield
        save_generator_states(directory, self.checkpointed_rngs, self.args.process_index)
        self.accelerator.wait_for_everyone()
        if self.args.should_save and os.path.isdir(directory):
            state.save(directory)

    def _save_checkpoint(self, model, trial):
        step = self.state.global_step
        check_finite_model(self.model, f"Round {self.current_round}, checkpoint at step {step}")
        directory = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{step}")
        state = self._state(
            self.current_round,
            "fitting",
            step,
            loss_sum=self._round_loss_sum,
            pseudo_labels_file=self._pseudo_labels_file,
        )
        with self._saving_state(directory, state):
            super()._save_checkpoint(model, trial)

    def _save_pseudo_labels(self, pseudo_labels):
        """Right after a labeling pass: save the pseudo-labels, so a resumed run reuses them instead of labeling again."""
        if not self._saves_self_training_state:
            return
        directory = round_dir(self.args.output_dir, self.current_round)
        path = os.path.join(directory, PSEUDO_LABELS_NAME)
        self._pseudo_labels_file = os.path.relpath(path, self.args.output_dir)
        state = self._state(self.current_round, "fitting", pseudo_labels_file=self._pseudo_labels_file)
        with self._saving_state(directory, state):
            if self.args.should_save:
                save_pseudo_labels(path, self.current_round, *pseudo_labels)

    def _save_round_end(self, output: TrainOutput, done: bool):
        """Save the model the next round starts from (or the run ends with), with the history so far."""
        if not self._saves_self_training_state:
            return
        round_ = self.current_round
        directory = round_end_dir(self.args.output_dir, round_)
        if done:
            state = self._state(round_, "done", train_output=output._asdict())
        else:
            state = self._state(round_ + 1, "labeling")
        with self._saving_state(directory, state):
            self.save_model(directory, _internal_call=True)
        if self.args.should_save:
            # Keep what a resume needs: this round's model (the teacher, or the rollback target) and the best round's.
            prune_round_ends(self.args.output_dir, keep={round_, self.best_round})
            if self.args.save_total_limit is not None:
                remove_round_checkpoints(self.args.output_dir, range(round_ + 1))

    def _resume(self, resume_from_checkpoint) -> tuple[SelfTrainingState | None, str | None]:
        """Find the state to resume from, and restore the history, the models it needs and the generators."""
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            if self.args.should_save and state_directories(self.args.output_dir):
                # A later resume must never pick up a state that an earlier run left in the same folder.
                logger.warning(
                    f"Starting a new run in {self.args.output_dir}: the saved self-training states of an earlier run "
                    "there are discarded (pass `resume_from_checkpoint=True` to resume it instead)."
                )
                discard_states_after(self.args.output_dir, (-1, 0, 0))
            return None, None
        if resume_from_checkpoint is True:
            found = find_latest_state(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        else:
            state = SelfTrainingState.load(resume_from_checkpoint)
            found = (resume_from_checkpoint, state) if state is not None else None
        if found is None:
            return self._resume_plain_checkpoint(resume_from_checkpoint)
        directory, state = found
        logger.info(f"Resuming self-training from {directory}: round {state.round}, {state.phase}, step {state.step}.")
        if state.seed != self.args.seed:
            logger.warning(
                f"The checkpoint was saved by a run with seed {state.seed}, this one has `seed`={self.args.seed}: the "
                "result will differ from an uninterrupted run."
            )
        if resume_from_checkpoint is not True and self.args.should_save:
            discard_states_after(self.args.output_dir, state.position)

        self.self_training_history = [dict(record) for record in state.history]
        self.best_round, self._best_metric = state.best_round, state.best_metric
        finished = state.round if state.phase == "done" else state.round - 1
        self._model_round = finished
        if self.self_training_history:
            self._model_round = self.self_training_history[-1].get("rolled_back_to_round", finished)
        if self.best_round is not None and self.best_round != self._model_round:
            self._load_round_end(self.best_round)
            self._best_state = self._copy_state()
        # The last round's model: the next round's teacher or first student, the rollback target, or the final model.
        # A Trainer checkpoint holds the student's weights itself.
        needs_last_model = state.step == 0 or self.args.rollback_on_worse_eval
        if finished >= 0 and needs_last_model:
            self._load_round_end(finished)
            if self.args.rollback_on_worse_eval:
                self._previous_state = self._copy_state()
        load_generator_states(directory, self.checkpointed_rngs, self.args.process_index)
        return state, directory

    def _resume_plain_checkpoint(self, resume_from_checkpoint) -> tuple[SelfTrainingState, str]:
        """Plain fine-tuning (`self_training_rounds=0`) also resumes from a Trainer checkpoint without our state."""
        where = self.args.output_dir if resume_from_checkpoint is True else resume_from_checkpoint
        if self.args.self_training_rounds > 0:
            raise ValueError(
                f"`resume_from_checkpoint`={resume_from_checkpoint!r}: no self-training state was found in {where}. "
                "Resume from `output_dir` or a folder saved by SemiSupervisedTrainer (`save_strategy` not 'no')."
            )
        checkpoint = where
        if resume_from_checkpoint is True:
            checkpoint = get_last_checkpoint(where) if os.path.isdir(where) else None
            if checkpoint is None:
                raise ValueError(f"`resume_from_checkpoint`=True: no checkpoint was found in `output_dir`={where!r}.")
        trainer_state = os.path.join(checkpoint, TRAINER_STATE_NAME)
        if not os.path.isfile(trainer_state):
            raise ValueError(f"`resume_from_checkpoint`={resume_from_checkpoint!r} is not a Trainer checkpoint.")
        step = TrainerState.load_from_json(trainer_state).global_step
        return SelfTrainingState(round=0, phase="fitting", step=max(step, 1), loss_sum=None), checkpoint

    def _load_round_end(self, round_: int):
        directory = round_end_dir(self.args.output_dir, round_)
        if SelfTrainingState.load(directory) is None:
            raise ValueError(f"Cannot resume: the model of the end of round {round_} ({directory}) is missing.")
        self._load_from_checkpoint(directory)
