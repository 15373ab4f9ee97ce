"""The round loop on its own: a stub host, teacher and selection rule, no model (each test runs in well under a second)."""

import json
import os
from unittest import mock

import numpy as np
import pytest
from conftest import tiny_config
from datasets import Dataset
from transformers.trainer_utils import TrainOutput

from hf_semisup.pseudo_labeling import PseudoLabels
from hf_semisup.rounds import RoundLoop
from hf_semisup.selection import SELECTION_RULES, Selection, SelectionRule
from hf_semisup.state import RunState
from hf_semisup.teachers import TEACHERS, Teacher


POOL = 10


class Accelerator:
    num_processes, process_index, is_local_main_process = 1, 0, True

    def wait_for_everyone(self):
        pass


class Host:
    """A `RoundHost` whose "weights" are the name of the round that trained them, and whose rounds are scripted."""

    def __init__(self, args, eval_metrics=None, crash_in_round=None):
        self.args, self.accelerator = args, Accelerator()
        self.data_collator = self.processing_class = None
        self.labeled_dataset = Dataset.from_dict({"input_ids": [[1, 2]] * 4, "labels": [0, 1, 0, 1]})
        self.unlabeled_source = Dataset.from_dict({"text": [f"row {i}" for i in range(POOL)]})
        self.unlabeled_dataset = Dataset.from_dict({"input_ids": [[3, i] for i in range(POOL)], "length": [2] * POOL})
        self.unlabeled_gold_labels = np.arange(POOL) % 2
        self.eval_dataset = "eval set" if eval_metrics else None
        self.class_names, self.class_prior = ["negative", "positive"], np.array([0.5, 0.5])
        self.checkpointed_rngs = {}
        self.eval_metrics, self.crash_in_round = eval_metrics or {}, crash_in_round
        self.weights, self.calls, self.events = "initial", [], []
        self.run = RunState()

    def labeling_model(self):
        return self.weights

    def fit_copy(self, train_set):
        self.calls.append(("fit_copy", len(train_set)))
        return "a fold's model"

    def start_student(self, round_):
        self.calls.append(("start_student", round_))

    def fit_round(self, round_, train_set, checkpoint, **kwargs):
        if round_ == self.crash_in_round:
            raise KeyboardInterrupt
        self.calls.append(("fit", round_, len(train_set), checkpoint))
        self.weights = f"round {round_}"
        steps = round_ + 2
        if self.run.loss_sum is not None:
            self.run.loss_sum += 0.25 * steps  # a loss of 0.25 a step, as `training_step` adds it up
        return TrainOutput(global_step=steps, training_loss=0.5, metrics={"train_loss": 0.5})

    def evaluate_round(self, ignore_keys=None):
        return {"eval_accuracy": self.eval_metrics[self.weights]} if self.eval_metrics else {}

    def copy_weights(self):
        return self.weights

    def load_weights(self, weights):
        self.calls.append(("load_weights", weights))
        self.weights = weights

    def save_round_model(self, directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "weights.json"), "w") as f:
            json.dump(self.weights, f)

    def load_round_model(self, directory):
        with open(os.path.join(directory, "weights.json")) as f:
            self.weights = json.load(f)

    def keep_best_round(self, round_, metric, directory):
        self.calls.append(("keep_best_round", round_, metric))

    def round_event(self, event, **kwargs):
        self.events.append((event, kwargs["run"].round))


class StubTeacher(Teacher):
    """Predicts class `row % 2` with a confidence that falls along the pool; records who taught."""

    taught = []

    def label(self, context):
        StubTeacher.taught.append((context.round, context.model))
        confidences = np.linspace(0.99, 0.6, POOL).astype(np.float32)
        return PseudoLabels(np.arange(POOL) % 2, confidences)


def first_rows(predictions, context):
    """Keeps the `2 * round` most confident rows; counts its calls."""
    first_rows.calls += 1
    return Selection(np.arange(2 * context.round), threshold=0.75)


first_rows.calls = 0


@pytest.fixture(autouse=True)
def stubs():
    StubTeacher.taught, first_rows.calls = [], 0
    # Round 1's teacher is `first_teacher`'s, later rounds' the model's: both are the stub here.
    with (
        mock.patch.dict(TEACHERS, {"stub": StubTeacher, "model": StubTeacher}),
        mock.patch.dict(SELECTION_RULES, {"stub": SelectionRule(first_rows)}),
    ):
        yield


def train(host, resume=None):
    """The loop over a fresh run state, as the trainer runs it."""
    host.run = RunState()
    RoundLoop(host, host.run).train(resume_from_checkpoint=resume)
    return host.run


def config(tmp_path, **kwargs):
    defaults = dict(self_training_rounds=2, first_teacher="stub", selection_strategy="stub", student_init="continue")
    return tiny_config(tmp_path, **{**defaults, **kwargs})


def test_each_round_labels_selects_builds_the_students_set_and_fits(tmp_path):
    host = Host(config(tmp_path))
    output = RoundLoop(host, RunState()).train()
    assert host.calls == [
        ("fit", 0, 4, None),
        ("start_student", 1),
        ("fit", 1, 4 + 2, None),
        ("start_student", 2),
        ("fit", 2, 4 + 4, None),
    ]
    # Round 1 is taught by the model of round 0, round 2 by round 1's student.
    assert StubTeacher.taught == [(1, "round 0"), (2, "round 1")]
    assert output.global_step == 4
    history = json.loads((tmp_path / "self_training_history.json").read_text())
    assert [r["round"] for r in history] == [0, 1, 2]
    assert [r["num_pseudo_labels"] for r in history] == [0, 2, 4]
    assert [r["threshold"] for r in history] == [None, 0.75, 0.75]
    assert history[2]["pseudo_label_class_counts"] == {"negative": 2, "positive": 2}
    assert history[2]["pseudo_label_accuracy"] == 1.0 and history[2]["teacher_pool_accuracy"] == 1.0
    assert [r["train_steps"] for r in history] == [2, 3, 4]
    assert host.events == [
        ("on_rounds_begin", 0),
        ("on_round_begin", 0),
        ("on_round_end", 0),
        ("on_round_begin", 1),
        ("on_round_end", 1),
        ("on_round_begin", 2),
        ("on_round_end", 2),
        ("on_rounds_end", 2),
    ]
    # Every round's pass is written for inspection, with its selection.
    assert sorted(os.listdir(tmp_path / "pseudo_labels")) == ["round-1.parquet", "round-2.parquet"]


def test_a_worse_round_is_rolled_back_and_ends_the_run(tmp_path):
    metrics = {"round 0": 0.6, "round 1": 0.8, "round 2": 0.7}
    host = Host(config(tmp_path, rollback_on_worse_eval=True, metric_for_best_model="accuracy"), metrics)
    run = RunState()
    RoundLoop(host, run).train()
    assert ("load_weights", "round 1") in host.calls and host.weights == "round 1"
    assert run.history[2]["rolled_back_to_round"] == 1 and run.history[2]["stopped"] == "eval_metric_worse"
    assert run.phase == "done" and run.model_round == 1


def test_the_best_round_is_kept_at_the_end(tmp_path):
    metrics = {"round 0": 0.6, "round 1": 0.9, "round 2": 0.7}
    best = dict(load_best_model_at_end=True, metric_for_best_model="accuracy")
    args = config(tmp_path, eval_strategy="epoch", save_strategy="epoch", **best)
    host, run = Host(args, metrics), RunState()
    RoundLoop(host, run).train()
    assert (run.best_round, run.best_metric) == (1, 0.9)
    assert host.weights == "round 1" and host.calls[-1] == ("keep_best_round", 1, 0.9)
    # Round 0's round-end model is pruned; round 1's (the best) and round 2's (the last) are kept.
    kept = sorted(d for d in os.listdir(tmp_path) if os.path.isdir(tmp_path / d / "round-end"))
    assert kept == ["round-1", "round-2"]


@pytest.mark.parametrize("crash_in_round", [1, 2])
def test_a_run_stopped_after_a_labeling_pass_resumes_without_labeling_again(tmp_path, crash_in_round):
    args = config(tmp_path / "uninterrupted", save_strategy="steps")
    uninterrupted = RunState()
    RoundLoop(Host(args), uninterrupted).train()

    args = config(tmp_path / "resumed", save_strategy="steps")
    with pytest.raises(KeyboardInterrupt):  # stopped in the round's fit, after its labeling pass was saved
        RoundLoop(Host(args, crash_in_round=crash_in_round), RunState()).train()
    StubTeacher.taught, first_rows.calls = [], 0
    host, run = Host(args), RunState()
    RoundLoop(host, run).train(resume_from_checkpoint=True)

    # The round's saved pass and selection are read back: no teacher, no rule, for the interrupted round.
    assert [r for r, _ in StubTeacher.taught] == list(range(crash_in_round + 1, 3))
    assert first_rows.calls == 2 - crash_in_round
    assert [c[1] for c in host.calls if c[0] == "fit"] == list(range(crash_in_round, 3))
    # The resumed round's student (continued from the round before's round-end save) teaches the round after.
    assert StubTeacher.taught[0][1] == f"round {crash_in_round}" if crash_in_round < 2 else StubTeacher.taught == []
    assert run.history == uninterrupted.history


def test_a_finished_run_resumes_to_its_saved_result(tmp_path):
    args = config(tmp_path, save_strategy="steps")
    RoundLoop(Host(args), RunState()).train()
    host, run = Host(args), RunState()
    output = RoundLoop(host, run).train(resume_from_checkpoint=True)
    assert host.calls == [] and output.global_step == 4 and len(run.history) == 3
    assert host.weights == "round 2"  # the final model, from the last round-end save


def test_an_unknown_rule_or_teacher_is_named(tmp_path):
    with pytest.raises(ValueError, match="`selection_strategy` must be one of .*'stub'.* got 'nope'"):
        config(tmp_path, selection_strategy="nope")
    with pytest.raises(ValueError, match="`first_teacher` must be one of .*'stub'.* got 'nope'"):
        config(tmp_path, first_teacher="nope")


def test_the_round_loss_is_the_mean_of_its_steps(tmp_path):
    run = train(Host(config(tmp_path)))
    assert [r["train_loss"] for r in run.history] == [0.25, 0.25, 0.25]  # not the Trainer's own 0.5


def test_a_resume_past_the_runs_rounds_is_an_error_not_an_endless_loop(tmp_path):
    args = config(tmp_path, save_strategy="steps", self_training_rounds=3)
    with pytest.raises(KeyboardInterrupt):
        train(Host(args, crash_in_round=2))
    fewer = config(tmp_path, save_strategy="steps", self_training_rounds=1)
    with pytest.raises(ValueError, match=r"stopped in round 2, but this run has `self_training_rounds`=1"):
        train(Host(fewer), resume=True)


def test_a_resumed_run_keeps_the_best_round_and_can_still_roll_back(tmp_path):
    best = dict(load_best_model_at_end=True, metric_for_best_model="accuracy", eval_strategy="epoch")
    metrics = {"round 0": 0.6, "round 1": 0.9, "round 2": 0.7, "round 3": 0.8}
    args = config(tmp_path / "a", save_strategy="epoch", self_training_rounds=3, **best)
    uninterrupted = train(Host(args, metrics))
    with pytest.raises(KeyboardInterrupt):
        train(Host(args, metrics, crash_in_round=3))
    host = Host(args, metrics)
    resumed = train(host, resume=True)
    assert resumed.history == uninterrupted.history and resumed.best_round == 1
    assert host.weights == "round 1"  # the best round's model, restored from its round-end save on resume

    # With rollback: round 2 is worse than round 1, the run goes back to round 1's model and stops; after a resume
    # in round 2, the model to go back to is restored from round 1's round-end save.
    args = config(tmp_path / "b", save_strategy="epoch", rollback_on_worse_eval=True, metric_for_best_model="accuracy")
    uninterrupted = train(Host(args, metrics))
    with pytest.raises(KeyboardInterrupt):
        train(Host(args, metrics, crash_in_round=2))
    host = Host(args, metrics)
    resumed = train(host, resume=True)
    assert resumed.history == uninterrupted.history and resumed.history[2]["rolled_back_to_round"] == 1
    assert host.weights == "round 1" and resumed.model_round == 1
