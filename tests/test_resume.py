"""Resuming after a crash gives the uninterrupted result; one seed gives one result; the state files are safe."""

import glob
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_model, tiny_config, toy_dataset
from transformers import TrainerCallback

import hf_semisup
from hf_semisup import SemiSupervisedTrainer
from hf_semisup.checkpointing import (
    find_latest_state,
    generator_state,
    load_selection,
    restore_generator_state,
    save_selection,
    save_state,
    write_json_atomic,
)
from hf_semisup.pseudo_labeling import PseudoLabels
from hf_semisup.selection import Selection
from hf_semisup.state import RunState


SCRIPT = os.path.join(os.path.dirname(__file__), "interruptible_run.py")
SAVED_ARRAYS = ("round", "labels", "confidences", "selected", "threshold")
KILLED = 17  # the exit code of interruptible_run.py's `os._exit`


@pytest.fixture(autouse=True)
def one_thread():
    # On a small shared CPU a second intra-op thread mostly waits for the first: one thread runs these tests ~10x faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def launch(output_dir, *options):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(hf_semisup.__file__))]))
    return subprocess.Popen(
        [sys.executable, SCRIPT, str(output_dir), *options],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process, expected_code):
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == expected_code, stderr[-4000:]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def events(output_dir, key):
    with open(os.path.join(output_dir, "events.jsonl")) as f:
        return [event[key] for event in map(json.loads, f) if key in event]


def test_runs_killed_anywhere_resume_to_the_uninterrupted_result(tmp_path):
    reference = launch(tmp_path / "reference")  # runs alongside the interrupted chain
    interrupted = tmp_path / "interrupted"
    # Killed in round 0 at step 6, in round 1 at step 10, then right after round 2's labeling pass.
    for i, (round_, step) in enumerate([(0, 6), (1, 10), (2, 0)]):
        resume = ["--resume"] if i else []
        finish(launch(interrupted, "--kill-round", str(round_), "--kill-step", str(step), *resume), KILLED)
        checkpoints = glob.glob(str(interrupted / "round-*" / "checkpoint-*"))
        assert len(checkpoints) <= 2, checkpoints  # save_total_limit=2 holds across rounds
    finish(launch(interrupted, "--resume"), 0)
    finish(reference, 0)

    expected, got = read_json(tmp_path / "reference" / "result.json"), read_json(interrupted / "result.json")
    assert expected["history"][2]["num_pseudo_labels"] > 0, "round 2 must reuse a non-empty accepted set"
    assert got["history"] == expected["history"]
    assert got["logits"] == expected["logits"]  # exact, on CPU
    for round_ in (1, 2):
        name = f"round-{round_}/self_training_pseudo_labels.npz"
        with np.load(interrupted / name) as got_arrays, np.load(tmp_path / "reference" / name) as expected_arrays:
            assert sorted(got_arrays.files) == sorted(expected_arrays.files) == sorted(SAVED_ARRAYS)
            for key in expected_arrays.files:
                np.testing.assert_array_equal(got_arrays[key], expected_arrays[key])
    assert read_json(interrupted / "self_training_history.json") == expected["history"]

    # Each resume skipped the finished work: round 0 restarted at its step-4 checkpoint, round 1 at step 8, and round 2
    # reused its saved pseudo-labels instead of labeling the pool again.
    assert events(tmp_path / "reference", "train_begin") == [[0, 0], [1, 0], [2, 0]]
    assert events(interrupted, "train_begin") == [[0, 0], [0, 4], [1, 0], [1, 8], [2, 0], [2, 0]]
    assert events(interrupted, "labeled_round") == [1, 2]


def build(output_dir, tokenizer, seed=0, **config):
    defaults = dict(
        self_training_rounds=1,
        num_train_epochs=4,
        learning_rate=1e-2,
        class_balance=False,
        confidence_threshold=0.55,
        seed=seed,
    )
    return SemiSupervisedTrainer(
        make_model(),
        tiny_config(output_dir, **{**defaults, **config}),
        train_dataset=toy_dataset(24),
        eval_dataset=toy_dataset(24, seed=1),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(40, seed=2),
    )


def outcome(trainer):
    predictions = trainer.pseudo_label()
    logits = trainer.predict(trainer.eval_dataset).predictions
    return trainer.self_training_history, predictions["pseudo_label"], predictions["confidence"], logits


def test_one_seed_gives_one_result(tmp_path, tokenizer):
    runs = []
    for i, seed in enumerate([0, 0, 1]):
        trainer = build(tmp_path / f"run-{i}", tokenizer, seed=seed)
        random.random(), np.random.rand(), torch.rand(3)  # the caller's randomness must not matter
        trainer.train()
        runs.append(outcome(trainer))
    (history, labels, confidences, logits), again, other_seed = runs
    assert history[1]["num_pseudo_labels"] > 0
    assert again[0] == history and again[1] == labels and again[2] == confidences
    assert np.array_equal(again[3], logits)
    assert not np.array_equal(other_seed[3], logits)  # the comparison can tell two runs apart


class TrainBegins(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.rounds_and_steps, self.round_end_logs = trainer, [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.rounds_and_steps.append((self.trainer.current_round, state.global_step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "self_training_round" in logs:
            self.round_end_logs.append((logs["self_training_round"], state.global_step))


def run_then_resume(tmp_path, tokenizer, checkpoint: str, **config):
    """One uninterrupted run, then a second one resumed from `checkpoint` of its outputs: both outcomes, and the
    second run's `(round, step)` at each train begin."""
    trainer = build(tmp_path, tokenizer, **config)
    trainer.train()
    expected = outcome(trainer)
    resumed = build(tmp_path, tokenizer, **config)
    starts = TrainBegins(resumed)
    resumed.add_callback(starts)
    resumed.train(resume_from_checkpoint=str(tmp_path / checkpoint))
    return expected, outcome(resumed), starts.rounds_and_steps


def assert_same_outcome(got, expected):
    assert got[0] == expected[0] and got[1] == expected[1]
    assert np.array_equal(got[3], expected[3])


def test_resume_from_a_given_checkpoint_with_reset_students(tmp_path, tokenizer):
    config = dict(student_init="reset", save_strategy="steps", save_steps=4)
    expected, got, starts = run_then_resume(tmp_path, tokenizer, "round-1/checkpoint-4", **config)
    assert starts == [(1, 4)]  # round 0 skipped, round 1 continued after step 4
    assert_same_outcome(got, expected)


def test_a_resumed_run_logs_at_the_steps_of_the_uninterrupted_one(tmp_path, tokenizer):
    # Logs are drawn at the run's step (the earlier rounds' steps added): a resumed run must count the rounds it skipped.
    config = dict(save_strategy="steps", save_steps=4)
    runs = []
    for resume in (None, str(tmp_path / "round-1" / "checkpoint-4")):
        trainer = build(tmp_path, tokenizer, **config)
        starts = TrainBegins(trainer)
        trainer.add_callback(starts)
        trainer.train(resume_from_checkpoint=resume)
        runs.append(starts.round_end_logs)
    uninterrupted, resumed = runs
    steps = [r["train_steps"] for r in trainer.self_training_history]
    assert uninterrupted == [(r, sum(steps[: r + 1])) for r in range(len(steps))]
    assert resumed == uninterrupted[1:]  # round 0 is not trained (nor logged) again


def test_resume_inside_a_round_stretched_by_min_steps_per_round(tmp_path, tokenizer):
    # 24 labels, batch 8, 1 epoch: 3 steps, stretched to 12; the resumed round must run to 12 again, not 3.
    config = dict(num_train_epochs=1, min_steps_per_round=12, save_strategy="steps", save_steps=4)
    expected, got, starts = run_then_resume(tmp_path, tokenizer, "round-0/checkpoint-8", **config)
    assert expected[0][0]["train_steps"] == 12
    assert starts[0] == (0, 8)
    assert_same_outcome(got, expected)


def test_resume_before_the_prototype_teacher_labels_round_1(tmp_path, tokenizer):
    # Killed in round 0: the resumed run builds round 1's class prototypes from the initial weights again.
    config = dict(first_teacher="embeddings", selection_strategy="topk", save_strategy="steps", save_steps=4)
    expected, got, starts = run_then_resume(tmp_path, tokenizer, "round-0/checkpoint-4", **config)
    assert expected[0][1]["num_pseudo_labels"] > 0
    assert starts[0] == (0, 4)
    assert_same_outcome(got, expected)


def test_resume_at_an_epoch_boundary_with_the_consistency_loss(tmp_path, tokenizer):
    # `save_strategy="epoch"` checkpoints on epoch boundaries, where `Trainer` does not restore the RNG: the consistency
    # loss's unlabeled loader, rebuilt on resume, once drew its seed from the global RNG there and shifted the dropout.
    config = dict(consistency_weight=1.0, student_init="continue", save_strategy="epoch")
    expected, got, starts = run_then_resume(tmp_path, tokenizer, "round-0/checkpoint-3", **config)
    assert starts[0] == (0, 3)
    assert_same_outcome(got, expected)


def test_checkpoint_pseudo_labels_are_arrays_and_earlier_json_files_still_load(tmp_path):
    labels, confidences, selected = np.array([1, 0, 1]), np.array([0.9, 0.6, 0.7], dtype=np.float32), np.array([0, 2])
    path = str(tmp_path / "round-1" / "self_training_pseudo_labels.npz")
    save_selection(path, 1, PseudoLabels(labels, confidences), Selection(selected, 0.65))
    with np.load(path) as arrays:  # plain arrays: no pickle needed to read them
        assert sorted(arrays.files) == sorted(SAVED_ARRAYS)
        assert arrays["confidences"].dtype == np.float32
    got, got_selected, thresholds = load_selection(path, 3)
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.confidences, confidences)
    np.testing.assert_array_equal(got_selected, selected)
    assert got.top_k_labels is None
    assert thresholds == (0.65, None, None)  # the selection itself is saved: a resumed round does not select again
    save_selection(path, 1, PseudoLabels(labels, confidences), Selection(selected, 0.65, None, np.array([0.7, 0.3])))
    np.testing.assert_array_equal(load_selection(path, 3)[2][2], [0.7, 0.3])  # and the pool's prior it kept
    assert os.listdir(tmp_path / "round-1") == ["self_training_pseudo_labels.npz"]  # no temporary file left
    with pytest.raises(ValueError, match="labels 3 rows, but the unlabeled set .* has 4"):
        load_selection(path, 4)

    # A run interrupted under an earlier version recorded a JSON file in its state.
    legacy = str(tmp_path / "self_training_pseudo_labels.json")
    write_json_atomic(legacy, {"round": 1, "labels": [1, 0, 1], "confidences": [0.9, 0.6, 0.7], "selected": [0, 2]})
    got, got_selected, thresholds = load_selection(legacy, 3)
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.confidences, confidences)
    np.testing.assert_array_equal(got_selected, selected)
    assert thresholds is None  # not saved then: the loop runs the rule again


def test_resume_without_a_saved_state_is_a_clear_error(tmp_path, tokenizer):
    trainer = build(tmp_path, tokenizer)
    with pytest.raises(ValueError, match="no self-training state was found"):
        trainer.train(resume_from_checkpoint=True)


def test_latest_state_orders_by_round_phase_and_step(tmp_path):
    saves = {
        "round-1/checkpoint-8": RunState(round=1, phase="fitting", step=8),
        "round-1/checkpoint-12": RunState(round=1, phase="fitting", step=12),
        "round-1": RunState(round=1, phase="fitting", step=0),
        "round-0/round-end": RunState(round=1, phase="labeling"),
        "round-0/checkpoint-20": RunState(round=0, phase="fitting", step=20),
    }
    for folder, state in saves.items():
        os.makedirs(tmp_path / folder, exist_ok=True)
        save_state(str(tmp_path / folder), state)
    os.makedirs(tmp_path / "round-1" / "checkpoint-16")  # an interrupted save: no state, never resumed from
    directory, state = find_latest_state(str(tmp_path))
    assert directory == str(tmp_path / "round-1" / "checkpoint-12") and state.step == 12


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "history.json")
    write_json_atomic(path, [{"round": 0}])
    with pytest.raises(TypeError):
        write_json_atomic(path, [{"round": object()}])
    assert read_json(path) == [{"round": 0}]
    assert os.listdir(tmp_path) == ["history.json"]


@pytest.mark.parametrize("kind", ["torch", "numpy", "python"])
def test_generator_states_survive_json(kind):
    make = {
        "torch": lambda: torch.Generator().manual_seed(3),
        "numpy": lambda: np.random.default_rng(3),
        "python": lambda: random.Random(3),
    }[kind]
    draw = {
        "torch": lambda g: torch.rand(4, generator=g).tolist(),
        "numpy": lambda g: g.random(4).tolist(),
        "python": lambda g: [g.random() for _ in range(4)],
    }[kind]
    generator = make()
    draw(generator)
    saved = json.loads(json.dumps(generator_state(generator)))
    expected = draw(generator)
    restored = make()
    restore_generator_state(restored, saved)
    assert draw(restored) == expected


def test_a_new_run_discards_the_states_an_earlier_run_left(tmp_path, tokenizer):
    stale = tmp_path / "round-2" / "round-end"
    os.makedirs(stale)
    save_state(str(stale), RunState(round=2, phase="done"))
    build(tmp_path, tokenizer, self_training_rounds=0, max_steps=1).train()
    assert find_latest_state(str(tmp_path)) is None  # a resume after a crash of this run cannot land in the old one


@pytest.mark.slow
def test_a_pretrained_model_killed_mid_round_resumes_to_the_uninterrupted_result(tmp_path):
    repo = os.path.dirname(os.path.dirname(hf_semisup.__file__))
    data = os.path.join(repo, "..", "shared", "data", "movie_snippets")
    assert os.path.isfile(os.path.join(data, "train.jsonl")), f"the real data is expected in {data}"
    reference = launch(tmp_path / "reference", "--real-data", data)
    interrupted = tmp_path / "interrupted"
    finish(launch(interrupted, "--real-data", data, "--kill-round", "1", "--kill-step", "5"), KILLED)
    finish(launch(interrupted, "--real-data", data, "--resume"), 0)
    finish(reference, 0)

    expected, got = read_json(tmp_path / "reference" / "result.json"), read_json(interrupted / "result.json")
    assert expected["history"][1]["num_pseudo_labels"] > 0
    assert got["history"] == expected["history"]
    assert got["logits"] == expected["logits"]
    assert events(interrupted, "train_begin") == [[0, 0], [1, 0], [1, 3]]
    assert events(interrupted, "labeled_round") == [1]


# ---- A checkpoint written before the round loop's redesign ---------------------------------------------------------
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "checkpoint-6d17e44")


@pytest.mark.parametrize("resume_from", ["latest", "round-1"])
def test_a_checkpoint_saved_by_an_earlier_version_resumes_to_the_uninterrupted_result(tmp_path, resume_from):
    # Saved at commit 6d17e44 (`fixtures/make_checkpoint.py`), stopped at step 6 of round 1: "latest" continues from
    # round 1's checkpoint at step 4, "round-1" fits round 1 again from its saved labeling pass, whose file (written
    # before selections were saved whole) has no thresholds: the rule selects again, and must keep the saved rows.
    sys.path.insert(0, os.path.dirname(FIXTURE))
    from make_checkpoint import resume_setup

    expected = resume_setup(str(tmp_path / "uninterrupted"), str(tmp_path))
    expected.train()
    shutil.copytree(FIXTURE, tmp_path / "resumed")
    resumed = resume_setup(str(tmp_path / "resumed"), str(tmp_path))
    starts = TrainBegins(resumed)
    resumed.add_callback(starts)
    resumed.train(resume_from_checkpoint=True if resume_from == "latest" else str(tmp_path / "resumed" / resume_from))

    assert starts.rounds_and_steps == ([(1, 4), (2, 0)] if resume_from == "latest" else [(1, 0), (2, 0)])
    assert expected.self_training_history[1]["num_pseudo_labels"] > 0
    assert resumed.self_training_history == expected.self_training_history
    for name, value in expected.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    "checkpoint",
    [
        "round-0/checkpoint-9",  # the last step of an epoch (3 steps each), in the middle of round 0
        "round-0/checkpoint-10",  # the last step of round 0, in its fourth epoch: stopped during its evaluation
        "round-1/checkpoint-10",  # the last step of the run
    ],
)
def test_resume_from_the_last_step_of_an_epoch_a_round_or_the_run(tmp_path, tokenizer, checkpoint):
    # `Trainer.train` resumed from a checkpoint of its last step trains one step more when that step is not the end of
    # an epoch: the round's history then said 11 steps and another epoch and loss.
    config = dict(max_steps=10, save_strategy="steps", save_steps=3, confidence_threshold=0.5)
    expected, got, starts = run_then_resume(tmp_path, tokenizer, checkpoint, **config)
    assert [r["train_steps"] for r in expected[0]] == [10, 10] and expected[0][0]["epoch"] == pytest.approx(10 / 3)
    assert expected[0][1]["num_pseudo_labels"] > 0
    assert_same_outcome(got, expected)
    # A round whose last step was saved is not trained again: its fit is that checkpoint.
    assert starts == {"round-0/checkpoint-9": [(0, 9), (1, 0)], "round-0/checkpoint-10": [(1, 0)]}.get(checkpoint, [])
