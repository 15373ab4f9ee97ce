"""The first teacher chosen by cross-fitting on the labeled set (`first_teacher="auto"`), and a teacher that ends the run."""

import json
from unittest import mock

import numpy as np
import pytest
from test_round_loop import Host, StubTeacher, config, stubs  # noqa: F401  (stubs: the stub teacher and rule, autouse)

from hf_semisup.rounds import RoundLoop
from hf_semisup.state import RunState
from hf_semisup.teacher_choice import CANDIDATES, choose, held_out_scores, stratified_folds
from hf_semisup.teachers import TEACHERS


def test_folds_split_every_class_evenly_and_cover_the_set_once():
    labels = np.array([0] * 8 + [1] * 8 + [2] * 5)
    folds = stratified_folds(labels, 2, seed=3)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(labels)))
    for c, n in ((0, 8), (1, 8), (2, 5)):
        assert sorted(int((labels[fold] == c).sum()) for fold in folds) == [n // 2, n - n // 2]
    assert abs(len(folds[0]) - len(folds[1])) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(labels, 2, seed=3)))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(labels, 2, seed=4)))


def test_the_best_held_out_candidate_wins_ties_going_by_true_class_probability_then_order():
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    assert held_out_scores(probabilities, np.array([0, 1, 0])) == pytest.approx(
        {"accuracy": 2 / 3, "true_class_probability": (0.9 + 0.6 + 0.3) / 3}
    )
    score = {"accuracy": 0.75, "true_class_probability": 0.6}
    assert choose({"embeddings": score, "model": {**score, "accuracy": 0.8}, "combination": score}) == "model"
    assert choose({"embeddings": score, "model": score, "combination": {**score, "true_class_probability": 0.7}}) == (
        "combination"
    )
    assert choose({name: score for name in CANDIDATES}) == "embeddings"


class StoppingTeacher(StubTeacher):
    """Labels like the stub, notes a choice, and ends the run."""

    def label(self, context):
        context.notes.update(first_teacher_choice="model", first_teacher_evidence={"model": {"accuracy": 1.0}})
        context.notes["stop"] = "first_teacher_evidence"
        return super().label(context)


@pytest.fixture
def stopping(monkeypatch):
    monkeypatch.setitem(TEACHERS, "stub", StoppingTeacher)


def test_a_teacher_that_stops_ends_the_run_with_the_model_it_was_given(tmp_path, stopping):
    host, run = Host(config(tmp_path)), RunState()
    output = RoundLoop(host, run).train()
    assert host.calls == [("fit", 0, 4, None)]  # no student started, none trained
    assert host.weights == "round 0" and run.model_round == 0 and run.phase == "done"
    assert output.global_step == 2  # round 0's
    history = json.loads((tmp_path / "self_training_history.json").read_text())
    assert [r["round"] for r in history] == [0, 1]
    assert history[1]["stopped"] == "first_teacher_evidence" and history[1]["num_pseudo_labels"] == 0
    assert history[1]["first_teacher_choice"] == "model" and "stop" not in history[1]


def test_a_run_resumed_after_a_stopping_teachers_pass_still_stops(tmp_path, stopping):
    args = config(tmp_path / "uninterrupted", save_strategy="steps")
    RoundLoop(Host(args), RunState()).train()
    expected = json.loads((tmp_path / "uninterrupted" / "self_training_history.json").read_text())

    args = config(tmp_path / "resumed", save_strategy="steps")
    host = Host(args)
    loop = RoundLoop(host, RunState())
    with mock.patch.object(RoundLoop, "stop_before_fitting", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):  # right after round 1's pass and its notes were saved
            loop.train()
    StubTeacher.taught = []
    host = Host(args)
    RoundLoop(host, RunState()).train(resume_from_checkpoint=True)
    assert StubTeacher.taught == [] and host.calls == []  # the pass and the teacher's notes were read back
    assert json.loads((tmp_path / "resumed" / "self_training_history.json").read_text()) == expected


# ---- With a model ------------------------------------------------------------------------------------------------------
def auto_trainer(tmp_path, tokenizer, **config):
    from conftest import make_model, tiny_config, toy_dataset

    from hf_semisup import SemiSupervisedTrainer

    config = {
        "self_training_rounds": 1,
        "max_steps": 3,
        "first_teacher": "auto",
        "selection_strategy": "topk",
        **config,
    }
    return SemiSupervisedTrainer(
        make_model(seed=2),
        tiny_config(tmp_path / "output", **config),
        train_dataset=toy_dataset(16, seed=1),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(24, seed=5),
    )


def test_auto_records_the_evidence_and_what_it_chose(tmp_path, tokenizer):
    trainer = auto_trainer(tmp_path, tokenizer)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    record = trainer.self_training_history[1]
    evidence = record["first_teacher_evidence"]
    assert sorted(evidence) == sorted(CANDIDATES)
    for scores in evidence.values():
        assert 0 <= scores["accuracy"] <= 1 and 0 < scores["true_class_probability"] < 1
    assert record["first_teacher_choice"] == choose(evidence)
    assert (record.get("stopped") == "first_teacher_evidence") == (record["first_teacher_choice"] == "model")
    # The fold models were copies: the trainer's model trained in its rounds only, from its own initial weights.
    assert any(not np.array_equal(v.numpy(), initial[k].numpy()) for k, v in trainer.model.state_dict().items())


@pytest.mark.parametrize("choice", ["embeddings", "combination", "model"])
def test_each_choice_labels_the_pool_or_keeps_round_0(tmp_path, tokenizer, choice):
    trainer = auto_trainer(tmp_path, tokenizer, save_strategy="no")
    fits = []
    original = trainer.fit_copy

    def counted(train_set):
        fits.append(len(train_set))
        return original(train_set)

    with (
        mock.patch("hf_semisup.teacher_choice.choose", return_value=choice),
        mock.patch.object(trainer, "fit_copy", counted),
    ):
        trainer.train()
    history = trainer.self_training_history
    assert fits == [8, 8]  # one copy per fold, each on the other half of the 16 labels
    assert history[1]["first_teacher_choice"] == choice
    from hf_semisup.model_card import build_model_card

    card = str(build_model_card(trainer))
    assert "The first teacher was chosen by cross-fitting on the labeled set" in card
    said = {
        "model": "the run kept it and stopped",
        "combination": "labeled by the mean of the prototypes' and the\nround-0 model's distributions",
        "embeddings": "Round 1 was labeled by the class prototypes.",
    }
    assert said[choice] in card and all(said[other] not in card for other in said if other != choice)
    if choice == "model":
        assert len(history) == 2 and history[1]["stopped"] == "first_teacher_evidence"
        assert "train_loss" not in history[1] and trainer.state.global_step == history[0]["train_steps"]
    else:
        assert "stopped" not in history[1] and history[1]["num_pseudo_labels"] > 0 and history[1]["train_steps"] == 3
