"""Each guard rail fires on a case built to trigger it, stops or warns as documented, and shows in the history."""

import glob
import json
import logging
import math
import os
import socket

import pytest
import safetensors.torch
import torch
from accelerate.utils import PrepareForLaunch, patch_environment
from conftest import make_model, tiny_config, toy_dataset
from torch.multiprocessing import start_processes
from transformers import TrainerCallback

from hf_semisup import NonFiniteError, SemiSupervisedTrainer
from hf_semisup.guards import collapse_alarm, gathered_loss
from hf_semisup.rounds import RoundLoop


@pytest.fixture(autouse=True)
def one_thread():
    # On a small shared CPU a second intra-op thread mostly waits for the first: one thread runs these tests ~10x faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_history(output_dir):
    with open(os.path.join(output_dir, "self_training_history.json")) as f:
        return json.load(f)


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path, tokenizer):
    trainer = None

    def loss_turning_nan(outputs, labels, num_items_in_batch=None):
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels)
        if trainer.current_round == 1 and trainer.state.global_step == 2:  # the third step of round 1
            return loss * float("nan")
        return loss

    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(tmp_path, self_training_rounds=1, num_train_epochs=1, save_strategy="steps", save_steps=1),
        train_dataset=toy_dataset(24),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(16, seed=2),
        compute_loss_func=loss_turning_nan,
    )
    with pytest.raises(NonFiniteError, match=r"Round 1: the training loss is nan at step 3 "):
        trainer.train()

    history = read_history(tmp_path)
    assert [record["round"] for record in history] == [0, 1]
    assert history[1]["stopped"] == "non_finite_loss" and history[1]["stopped_at_step"] == 3
    # Steps 1 and 2 were checkpointed, step 3 never was, and nothing saved or held in memory is non-finite.
    assert sorted(os.listdir(tmp_path / "round-1"))[:2] == ["checkpoint-1", "checkpoint-2"]
    assert not os.path.exists(tmp_path / "round-1" / "checkpoint-3")
    for path in glob.glob(str(tmp_path / "**" / "model.safetensors"), recursive=True):
        assert all(torch.isfinite(t).all() for t in safetensors.torch.load_file(path).values()), path
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # The model card says the same as the history: round 1 stopped.
    trainer.save_model(str(tmp_path / "after"))
    card = (tmp_path / "after" / "README.md").read_text()
    table = card.split("## Self-training rounds")[1].split("\n\n")[1]
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["0", "1"]


class PoisonWeights(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 2:
            with torch.no_grad():
                model.classifier.bias.fill_(float("inf"))


def test_non_finite_weights_are_never_saved(tmp_path, tokenizer):
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(tmp_path, self_training_rounds=0, num_train_epochs=1, save_strategy="steps", save_steps=1),
        train_dataset=toy_dataset(24),
        processing_class=tokenizer,
        callbacks=[PoisonWeights()],
    )
    with pytest.raises(NonFiniteError, match=r"Round 0, checkpoint at step 2: .* not finite .*'classifier.bias'"):
        trainer.train()
    assert os.path.isdir(tmp_path / "checkpoint-1")
    assert not os.path.exists(tmp_path / "checkpoint-2")


def biased_model(toward_class):
    """A model whose classifier bias puts every text in one class with near-certainty."""
    model = make_model()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([8.0, -8.0] if toward_class == 0 else [-8.0, 8.0]))
    return model


def test_collapse_alarm_fires_when_one_class_takes_the_pseudo_labels(tmp_path, tokenizer, caplog):
    args = tiny_config(
        tmp_path, self_training_rounds=1, num_train_epochs=1, learning_rate=1e-9, class_balance=False, max_steps=1
    )
    trainer = SemiSupervisedTrainer(
        biased_model(toward_class=1),
        args,
        train_dataset=toy_dataset(24),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(30, seed=2),
    )
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        trainer.train()
    history = read_history(tmp_path)
    assert history[0]["collapse_alarm"] is False
    assert history[1]["collapse_alarm"] is True
    assert history[1]["collapse_alarm_class"] == "positive" and history[1]["collapse_alarm_share"] == 1.0
    assert history[1]["pseudo_label_class_counts"] == {"negative": 0, "positive": 30}
    assert "collapse alarm" in caplog.text and "'positive'" in caplog.text
    assert "Consider `class_balance=True`" in caplog.text
    logged = [log for log in trainer.state.log_history if "pseudo_label_collapse_alarm" in log]
    assert logged[-1]["pseudo_label_collapse_alarm"] == 1.0

    # Class-balanced selection keeps the labeled shares, so the same teacher cannot set it off.
    # Nothing is accepted, with a threshold or top-k: the teacher never predicts 'negative', so no pseudo-label set has
    # the labeled shares.
    trainer.args.class_balance = True
    for strategy in ("threshold", "topk"):
        trainer.args.selection_strategy = strategy
        record = {"round": 1}
        RoundLoop(trainer, trainer.run_state).student_set(1, record)
        assert record["collapse_alarm"] is False
        assert record["num_pseudo_labels"] == 0


def test_collapse_alarm_rule():
    balanced = [0.5, 0.5]
    assert collapse_alarm([81, 19], balanced, margin=0.3) == (0, 0.81)
    assert collapse_alarm([79, 21], balanced, margin=0.3) is None
    assert collapse_alarm([19, 81], balanced, margin=0.3) == (1, 0.81)
    assert collapse_alarm([100, 0], [0.9, 0.1], margin=0.3) is None  # one class, but as the labeled set has it
    assert collapse_alarm([10, 60, 30], [0.6, 0.2, 0.2], margin=0.3) == (1, 0.6)  # 60% of a class that is 20%
    assert collapse_alarm([0, 0], balanced, margin=0.3) is None
    assert collapse_alarm([100, 0], balanced, margin=None) is None


class RoundEndWeights(TrainerCallback):
    def __init__(self):
        self.weights = []

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def test_rollback_when_a_round_makes_the_eval_metric_worse(tmp_path, tokenizer, caplog):
    scores = iter([0.5, 0.8, 0.3, 0.9])  # one evaluation per round; round 2 is worse than round 1

    def scripted_metrics(_):
        return {"score": next(scores)}

    recorder = RoundEndWeights()
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(
            tmp_path,
            self_training_rounds=3,
            num_train_epochs=1,
            rollback_on_worse_eval=True,
            metric_for_best_model="score",
            confidence_threshold=0.5001,
            student_init="continue",
        ),
        train_dataset=toy_dataset(16),
        eval_dataset=toy_dataset(8, seed=1),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(24, seed=2),
        compute_metrics=scripted_metrics,
        callbacks=[recorder],
    )
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        trainer.train()

    history = read_history(tmp_path)
    assert [record["eval_score"] for record in history] == [0.5, 0.8, 0.3]  # round 3 never ran
    assert history[2]["rolled_back_to_round"] == 1 and history[2]["stopped"] == "eval_metric_worse"
    assert "stopped" not in history[1]
    assert "Going back to the model of round 1" in caplog.text
    assert len(recorder.weights) == 3
    final = trainer.model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in recorder.weights[1].items())
    assert not all(torch.equal(final[k], v) for k, v in recorder.weights[2].items())


def test_rollback_needs_an_eval_set(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="rollback_on_worse_eval.*eval_dataset"):
        SemiSupervisedTrainer(
            make_model(),
            tiny_config(tmp_path, self_training_rounds=1, rollback_on_worse_eval=True),
            train_dataset=toy_dataset(8),
            processing_class=tokenizer,
            unlabeled_dataset=toy_dataset(8, seed=1),
        )


@pytest.mark.parametrize("margin", [0.0, 1.0, -0.2])
def test_collapse_alarm_margin_outside_the_open_interval(tmp_path, margin):
    with pytest.raises(ValueError, match=f"collapse_alarm_margin.*{margin}"):
        tiny_config(tmp_path, collapse_alarm_margin=margin)


def _loss_nan_on_process_1():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # forked from a process that already has a state
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    loss = torch.tensor(float("nan") if accelerator.process_index == 1 else 0.5)
    value = gathered_loss(loss, accelerator)
    assert math.isnan(value), f"process {accelerator.process_index} saw {value}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_non_finite_loss_on_one_process_is_seen_by_every_process(tmp_path):
    # accelerate's debug_launcher, on a free port: other jobs on this machine may hold its fixed 29500.
    environment = dict(
        world_size=2,
        master_addr="127.0.0.1",
        master_port=str(free_port()),
        accelerate_mixed_precision="no",
        accelerate_debug_rdv_file=str(tmp_path / "rdv"),
        accelerate_use_cpu="yes",
        gloo_socket_ifname="lo",
    )
    with patch_environment(**environment):
        start_processes(PrepareForLaunch(_loss_nan_on_process_1, debug=True), nprocs=2, start_method="fork")
