"""
Saving and restoring the run's state ([`~hf_semisup.state.RunState`]) with every checkpoint, so an interrupted run
resumes exactly where it stopped (the folders: `outputs.py`).

A state file is written last in its folder, atomically, and removed before the folder is written again: a folder
without one is an incomplete save and is never resumed from. `train(resume_from_checkpoint=True)` resumes from the
state furthest along the run (round, then phase, then step).

Random generators other than the global ones (e.g. an unlabeled sampler's) are saved per process when registered in
`SemiSupervisedTrainer.checkpointed_rngs`: a `torch.Generator`, a `numpy.random.Generator`, a `random.Random`, or an
object with JSON-serializable `state_dict()` / `load_state_dict()`.
"""

import base64
import contextlib
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
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .outputs import RNG_NAME, ROUND_END_DIR, STATE_NAME, TRAINER_STATE_NAME, round_dir
from .pseudo_labeling import PseudoLabels
from .state import PHASES, RunState


logger = logging.getLogger(__name__)

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


# ---- The state file -------------------------------------------------------------------------------------------------
def save_state(directory: str, state: RunState):
    write_json_atomic(os.path.join(directory, STATE_NAME), {"version": STATE_VERSION, **state.saved()})


def load_state(directory: str) -> RunState | None:
    """The state saved in `directory`, or `None` when there is none (an incomplete or foreign checkpoint)."""
    path = os.path.join(directory, STATE_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        payload = json.load(f)
    version = payload.pop("version", None)
    if version != STATE_VERSION:
        raise ValueError(f"{path} has self-training state version {version!r}; this version reads {STATE_VERSION}.")
    state = RunState.from_saved(payload)
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


def find_latest_state(output_dir: str) -> tuple[str, RunState] | None:
    """The `(folder, state)` furthest along the run under `output_dir`, or `None`."""
    latest = None
    for directory in state_directories(output_dir):
        state = load_state(directory)
        if state is not None and (latest is None or state.position > latest[1].position):
            latest = (directory, state)
    return latest


def discard_states_after(output_dir: str, position: tuple[int, int, int]):
    """Remove the state files of a run's later saves, so resuming from an earlier one never mixes two futures."""
    for directory in state_directories(output_dir):
        state = load_state(directory)
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


@contextlib.contextmanager
def saving_state(directory: str, state: RunState, accelerator, should_save: bool, generators: dict):
    """Write a folder (in the `with` block), then its self-training state last: a folder without one is never
    resumed from."""
    if should_save:
        remove_state(directory)
    yield
    save_generator_states(directory, generators, accelerator.process_index)
    accelerator.wait_for_everyone()
    if should_save and os.path.isdir(directory):
        save_state(directory, state)


def resume_point(
    output_dir: str, resume_from_checkpoint, *, rounds: int, should_save: bool
) -> tuple[str, RunState, bool] | None:
    """
    The `(folder, saved state, plain)` that `train(resume_from_checkpoint=...)` continues from, or `None` for a new run
    (whose start discards the states an earlier run left in `output_dir`, so that a later resume never lands in it).
    `plain`: the folder is a Trainer checkpoint of plain fine-tuning, without a state of ours.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        if should_save and state_directories(output_dir):
            logger.warning(
                f"Starting a new run in {output_dir}: the saved self-training states of an earlier run there are "
                "discarded (pass `resume_from_checkpoint=True` to resume it instead)."
            )
            discard_states_after(output_dir, (-1, 0, 0))
        return None
    if resume_from_checkpoint is True:
        found = find_latest_state(output_dir) if os.path.isdir(output_dir) else None
    else:
        state = load_state(resume_from_checkpoint)
        found = (resume_from_checkpoint, state) if state is not None else None
    if found is None:
        return _plain_checkpoint(output_dir, resume_from_checkpoint, rounds)
    if resume_from_checkpoint is not True and should_save:
        discard_states_after(output_dir, found[1].position)
    return (*found, False)


def _plain_checkpoint(output_dir: str, resume_from_checkpoint, rounds: int) -> tuple[str, RunState, bool]:
    """Plain fine-tuning (`self_training_rounds=0`) also resumes from a Trainer checkpoint without our state."""
    where = output_dir if resume_from_checkpoint is True else resume_from_checkpoint
    if rounds > 0:
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
    return checkpoint, RunState(round=0, phase="fitting", step=max(step, 1), loss_sum=None), True


# ---- A round's labeling pass and selection ---------------------------------------------------------------------------
def save_selection(path: str, round_: int, predictions: PseudoLabels, selection, probabilities=None):
    """
    Save the teacher's label and confidence for every pool row, the selection (the accepted rows in selection order and
    its thresholds) and, when given, every row's full distribution, as NumPy arrays (`.npz`).
    """
    arrays = {
        "round": np.asarray(round_, dtype=np.int64),
        "labels": np.asarray(predictions.labels, dtype=np.int64),
        "confidences": np.asarray(predictions.confidences, dtype=np.float32),
        "selected": np.asarray(selection.selected, dtype=np.int64),
        "threshold": np.asarray(np.nan if selection.threshold is None else selection.threshold, dtype=np.float64),
    }
    if selection.class_thresholds is not None:
        arrays["class_thresholds"] = np.asarray(selection.class_thresholds, dtype=np.float64)
    if getattr(selection, "class_prior", None) is not None:
        arrays["class_prior"] = np.asarray(selection.class_prior, dtype=np.float64)
    if probabilities is not None:
        arrays["probabilities"] = np.asarray(probabilities, dtype=np.float32)
    write_atomic(path, lambda f: np.savez(f, **arrays), mode="wb")


def load_selection(path: str, pool_size: int) -> tuple[PseudoLabels, np.ndarray, tuple | None]:
    """
    `(predictions, selected, thresholds)` as saved by [`save_selection`], checked against the pool's size. The
    predictions carry every class's probability when the file holds them; `thresholds` is `(threshold,
    class_thresholds, class_prior)` (the [`~selection.Selection`] fields after `selected`), or `None` for a file written before the selection was saved with it (`.json`, or `.npz` without
    a `threshold`).
    """
    if path.endswith(".json"):  # written by earlier versions, before the arrays moved to `.npz`
        with open(path) as f:
            payload = json.load(f)
    else:
        with np.load(path) as arrays:
            payload = {key: arrays[key] for key in arrays.files}
    labels = np.asarray(payload["labels"], dtype=np.int64)
    if pool_size is not None and len(labels) != pool_size:  # a streamed pool's size is not known
        raise ValueError(
            f"{path} labels {len(labels)} rows, but the unlabeled set (`unlabeled_dataset`) has {pool_size}: resume "
            "with the same datasets as the interrupted run."
        )
    confidences = np.asarray(payload["confidences"], dtype=np.float32)
    probabilities = payload.get("probabilities")
    if probabilities is None:
        predictions = PseudoLabels(labels, confidences)
    else:
        predictions = PseudoLabels.from_probabilities(labels, confidences, np.asarray(probabilities, dtype=np.float32))
    thresholds = None
    if "threshold" in payload:
        threshold = float(payload["threshold"])
        thresholds = (
            None if np.isnan(threshold) else threshold,
            payload.get("class_thresholds"),
            payload.get("class_prior"),
        )
    return predictions, np.asarray(payload["selected"], dtype=np.int64), thresholds


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
