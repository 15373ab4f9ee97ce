import json
import logging
import os
import pathlib

import numpy as np
import pytest
import torch
from conftest import make_model, tiny_config, toy_dataset
from datasets import ClassLabel, Dataset
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from hf_semisup import SemiSupervisedTrainer
from hf_semisup.rounds import RoundLoop


def test_pseudo_label_equals_a_manual_forward_pass(tmp_path, tokenizer):
    unlabeled = toy_dataset(37, seed=3)  # odd size, uneven lengths: several padded batches
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(tmp_path, per_device_eval_batch_size=8),
        train_dataset=toy_dataset(16),
        processing_class=tokenizer,
        unlabeled_dataset=unlabeled,
    )
    result = trainer.pseudo_label()
    assert sorted(result.column_names) == ["confidence", "label", "pseudo_label", "text"]
    assert result["text"] == unlabeled["text"]

    model = trainer.model.eval()
    for row, text in enumerate(unlabeled["text"]):
        with torch.no_grad():
            probabilities = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
        assert result[row]["pseudo_label"] == int(probabilities.argmax())
        assert result[row]["confidence"] == pytest.approx(float(probabilities.max()), abs=1e-5)

    # Any other dataset, raw text, gets the same treatment.
    other = trainer.pseudo_label(Dataset.from_dict({"text": unlabeled["text"][:5]}))
    assert other["pseudo_label"] == result["pseudo_label"][:5]


def test_fixed_teacher_accepts_exactly_the_confident_rows(tmp_path, tokenizer):
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(tmp_path, class_balance=False),
        train_dataset=toy_dataset(16),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(60, seed=5),
    )
    predictions = trainer.pseudo_label()
    threshold = float(np.median(predictions["confidence"]))
    trainer.args.confidence_threshold = threshold
    record = {"round": 1}
    train_set = RoundLoop(trainer, trainer.run_state).student_set(1, record)
    confident = np.asarray(predictions["confidence"]) >= threshold
    assert 0 < confident.sum() < 60, "the threshold must split this pool for the test to mean something"
    assert record["num_pseudo_labels"] == confident.sum()
    assert record["num_confident"] == confident.sum()
    assert len(train_set) == 16 + confident.sum()
    # The appended rows are the confident ones, with the teacher's labels.
    assert sorted(train_set["labels"][16:]) == sorted(np.asarray(predictions["pseudo_label"])[confident].tolist())
    # The pool's hidden labels are used for diagnostics only.
    gold = np.asarray([{"negative": 0, "positive": 1}[x] for x in predictions["label"]])
    expected = (np.asarray(predictions["pseudo_label"]) == gold)[confident].mean()
    assert record["pseudo_label_accuracy"] == pytest.approx(expected)


def test_zero_rounds_reproduces_plain_trainer(tmp_path, tokenizer):
    labeled = toy_dataset(40)
    tokenized = labeled.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    tokenized = tokenized.map(
        lambda b: {"labels": [{"negative": 0, "positive": 1}[x] for x in b["label"]]}, batched=True
    )
    tokenized = tokenized.remove_columns("label")
    common = dict(
        report_to="none",
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        num_train_epochs=2,
        save_strategy="no",
        use_cpu=True,
        seed=7,
        disable_tqdm=True,
    )
    plain = Trainer(
        make_model(seed=1),
        TrainingArguments(output_dir=str(tmp_path / "plain"), **common),
        train_dataset=tokenized,
        processing_class=tokenizer,
    )
    plain.train()
    ours = SemiSupervisedTrainer(
        make_model(seed=1),
        tiny_config(tmp_path / "ours", self_training_rounds=0, **common),
        train_dataset=labeled,
        processing_class=tokenizer,
    )
    ours.train()
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), ours.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert ours.model.state_dict()["classifier.weight"].ne(make_model(seed=1).state_dict()["classifier.weight"]).any()


def test_self_training_on_a_learnable_task(tmp_path, tokenizer):
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(tmp_path, self_training_rounds=2, num_train_epochs=20, learning_rate=3e-3, warmup_steps=0),
        train_dataset=toy_dataset(64),
        eval_dataset=toy_dataset(100, seed=1),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(300, seed=2, positive_share=0.7),
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    history = trainer.self_training_history
    assert [r["round"] for r in history] == [0, 1, 2]
    for record in history:
        for key in ("num_pseudo_labels", "pseudo_label_class_counts", "threshold", "eval_accuracy", "eval_f1"):
            assert key in record
    assert history[0]["num_pseudo_labels"] == 0
    assert history[0]["threshold"] is None  # round 0 selects nothing: no threshold to report
    assert history[1]["threshold"] == 0.9 and history[1]["num_pseudo_labels"] > 50
    assert history[1]["pseudo_label_accuracy"] > 0.8  # chance is 0.5
    assert sum(history[1]["pseudo_label_class_counts"].values()) == history[1]["num_pseudo_labels"]
    # Class balance: the accepted set follows the 50/50 labeled prior, not the pool's 70/30.
    counts = history[1]["pseudo_label_class_counts"]
    assert abs(counts["positive"] - counts["negative"]) <= 1
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())

    with open(os.path.join(tmp_path, "self_training_history.json")) as f:
        assert json.load(f) == json.loads(json.dumps(history))
    logged = [log for log in trainer.state.log_history if "num_pseudo_labels" in log]
    assert logged and logged[-1]["self_training_round"] == 2
    assert "pseudo_label_threshold" in logged[-1]
    assert logged[-1]["num_pseudo_labels"] == history[2]["num_pseudo_labels"]
    # The record's other figures reach the loggers too.
    for key, name in {
        "num_confident": "pseudo_label_num_confident",
        "mean_confidence": "pseudo_label_mean_confidence",
        "teacher_pool_accuracy": "teacher_pool_accuracy",
        "num_train_examples": "num_train_examples",
    }.items():
        assert logged[-1][name] == history[2][key], name


def test_round_with_nothing_confident_trains_on_labeled_data(tmp_path, tokenizer):
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(tmp_path, self_training_rounds=1, num_train_epochs=1, confidence_threshold=0.999999),
        train_dataset=toy_dataset(16),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(40, seed=2),
    )
    trainer.train()
    assert trainer.self_training_history[1]["num_pseudo_labels"] == 0
    assert trainer.self_training_history[1]["num_train_examples"] == 16


def test_class_names_are_written_into_the_saved_config(tmp_path, tokenizer):
    labeled = toy_dataset(16, names=("bad", "good"))
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(tmp_path, self_training_rounds=0, num_train_epochs=1),
        train_dataset=labeled,
        processing_class=tokenizer,
    )
    assert trainer.model.config.id2label == {0: "bad", 1: "good"}
    assert trainer.labeled_dataset["labels"] == [{"bad": 0, "good": 1}[x] for x in labeled["label"]]
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "saved"))
    assert reloaded.config.label2id == {"bad": 0, "good": 1}


def test_class_label_and_int_labels_and_pretokenized_input(tmp_path, tokenizer):
    rows = toy_dataset(16, names=None)
    labeled = rows.cast_column("label", ClassLabel(names=["neg", "pos"]))
    trainer = SemiSupervisedTrainer(
        make_model(), tiny_config(tmp_path, self_training_rounds=0), train_dataset=labeled, processing_class=tokenizer
    )
    assert trainer.model.config.id2label == {0: "neg", 1: "pos"}
    assert trainer.labeled_dataset["labels"] == rows["label"]

    tokenized = rows.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(tmp_path, self_training_rounds=0),
        train_dataset=tokenized,
        processing_class=tokenizer,
    )
    assert trainer.labeled_dataset["labels"] == rows["label"]
    assert trainer.labeled_dataset["input_ids"] == tokenized["input_ids"]


@pytest.mark.parametrize("as_type", [str, pathlib.Path])
def test_model_given_as_a_path(tmp_path, tokenizer, as_type):
    make_model(num_labels=2).save_pretrained(str(tmp_path / "tiny"))
    tokenizer.save_pretrained(str(tmp_path / "tiny"))
    labeled = toy_dataset(16, names=("neg", "pos"))
    trainer = SemiSupervisedTrainer(
        as_type(tmp_path / "tiny"), tiny_config(tmp_path / "out", self_training_rounds=0), train_dataset=labeled
    )
    assert trainer.processing_class is not None
    assert trainer.model.config.id2label == {0: "neg", 1: "pos"}


def test_model_init_kwargs_load_the_model_tokenizer_and_config(tmp_path, tokenizer):
    make_model(num_labels=2).save_pretrained(str(tmp_path / "repo" / "sub"))
    tokenizer.save_pretrained(str(tmp_path / "repo" / "sub"))
    labeled = toy_dataset(16, names=("neg", "pos"))
    with pytest.raises((OSError, ValueError)):  # the files are only in the subfolder
        SemiSupervisedTrainer(
            str(tmp_path / "repo"), tiny_config(tmp_path / "out", self_training_rounds=0), train_dataset=labeled
        )

    init_kwargs = {"subfolder": "sub", "dtype": "bfloat16", "hidden_dropout_prob": 0.0}
    config = tiny_config(tmp_path / "out", self_training_rounds=0, model_init_kwargs=init_kwargs)
    trainer = SemiSupervisedTrainer(str(tmp_path / "repo"), config, train_dataset=labeled)
    assert trainer.model.dtype == torch.bfloat16
    assert trainer.model.config.hidden_dropout_prob == 0.0 != make_model().config.hidden_dropout_prob
    assert trainer.model.config.id2label == {0: "neg", 1: "pos"}  # the classes still come from the labeled set
    assert trainer.processing_class.get_vocab() == tokenizer.get_vocab()


class RoundEndWeights(TrainerCallback):
    def __init__(self):
        self.weights = []

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def test_load_best_model_at_end_keeps_the_best_round(tmp_path, tokenizer):
    scores = iter([0.2, 0.2, 0.9, 0.9, 0.5, 0.5])  # two evaluations per round: in-round epoch, then end of round

    def scripted_metrics(_):
        return {"score": next(scores)}

    recorder = RoundEndWeights()
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(
            tmp_path,
            self_training_rounds=2,
            num_train_epochs=1,
            eval_strategy="epoch",
            save_strategy="epoch",
            load_best_model_at_end=True,
            metric_for_best_model="score",
            confidence_threshold=0.5001,
            student_init="continue",
        ),
        train_dataset=toy_dataset(16),
        eval_dataset=toy_dataset(20, seed=1),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(40, seed=2),
        compute_metrics=scripted_metrics,
        callbacks=[recorder],
    )
    trainer.train()
    assert trainer.best_round == 1
    assert [r["eval_score"] for r in trainer.self_training_history] == [0.2, 0.9, 0.5]
    assert len(recorder.weights) == 3
    final = trainer.model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in recorder.weights[1].items())
    assert not all(torch.equal(final[k], v) for k, v in recorder.weights[2].items())
    # Checkpoints of different rounds live in different folders.
    assert sorted(os.listdir(tmp_path / "round-1")) and sorted(os.listdir(tmp_path / "round-2"))
    # The trainer state names the kept round, not the best checkpoint of the last round trained.
    assert trainer.state.best_metric == 0.9
    assert trainer.state.best_model_checkpoint == str(tmp_path / "round-1" / "round-end")


def test_gradient_accumulation_matches_the_big_batch_without_consistency(tmp_path, tokenizer):
    # BERT's forward takes **kwargs, so a stock Trainer would think it divides the loss by `num_items_in_batch` itself
    # and skip the accumulation scaling: 2 x 4 would then take twice the step of 1 x 8.
    def update(**kwargs):
        trainer = SemiSupervisedTrainer(
            make_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
            tiny_config(tmp_path, self_training_rounds=0, max_steps=1, optim="sgd", **kwargs),
            train_dataset=toy_dataset(8),
            processing_class=tokenizer,
        )
        trainer.train()
        initial = make_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return torch.cat(
            [(p - q).flatten() for p, q in zip(trainer.model.parameters(), initial.parameters(), strict=True)]
        )

    big = update(per_device_train_batch_size=8)
    accumulated = update(per_device_train_batch_size=4, gradient_accumulation_steps=2)
    assert big.abs().max() > 0
    torch.testing.assert_close(accumulated, big, rtol=1e-4, atol=1e-6)


def whole_pool_trainer(tmp_path, tokenizer, **config) -> SemiSupervisedTrainer:
    """16 labels and a 400-row pool that every round takes whole, so the rounds' lengths do not depend on the teacher."""
    args = tiny_config(tmp_path, confidence_threshold=0.5, **config)
    args.class_balance = False  # threshold 0.5 without class balance accepts every row
    return SemiSupervisedTrainer(
        make_model(),
        args,
        train_dataset=toy_dataset(16),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(400, seed=4),
    )


def test_small_rounds_train_at_least_min_steps_per_round(tmp_path, tokenizer, caplog):
    trainer = whole_pool_trainer(
        tmp_path, tokenizer, min_steps_per_round=40, num_train_epochs=1, self_training_rounds=1
    )
    with caplog.at_level(logging.INFO, logger="hf_semisup"):
        trainer.train()
    stretched = [r.getMessage() for r in caplog.records if "min_steps_per_round" in r.getMessage()]
    assert stretched == [
        "Round 0: 1 epochs of 16 examples are fewer than `min_steps_per_round`=40 optimizer steps: training 40 steps."
    ]
    first, second = trainer.self_training_history
    assert first["train_steps"] == 40  # 16 labels: 1 epoch is 2 steps, raised to the floor
    assert second["num_train_examples"] == 416
    assert second["train_steps"] == 52  # the pseudo-labeled round: 1 epoch is more than the floor
    assert trainer.args.max_steps == -1, "the per-round length must not leak into the arguments"


def test_students_train_student_epochs(tmp_path, tokenizer):
    # Round 0 trains num_train_epochs on the labels; each student trains student_epochs on labeled + pseudo-labeled rows.
    trainer = whole_pool_trainer(tmp_path, tokenizer, num_train_epochs=2, student_epochs=1, self_training_rounds=2)
    trainer.train()
    assert [r["num_train_examples"] for r in trainer.self_training_history] == [16, 416, 416]
    assert [r["train_steps"] for r in trainer.self_training_history] == [4, 52, 52]
    assert trainer.args.num_train_epochs == 2, "the students' epochs must not leak into the arguments"


def test_head_label_kwargs_follow_the_labeled_set_for_placeholder_checkpoints():
    from transformers import BertConfig

    from hf_semisup.modeling import head_label_kwargs

    placeholder, named = BertConfig(), BertConfig(id2label={0: "neg", 1: "pos"})
    strings = Dataset.from_dict({"text": ["a", "b", "c"], "label": ["pos", "neg", "mid"]})
    assert head_label_kwargs(placeholder, strings, "label") == {
        "num_labels": 3,
        "id2label": {0: "mid", 1: "neg", 2: "pos"},
        "label2id": {"mid": 0, "neg": 1, "pos": 2},
    }
    class_label = strings.cast_column("label", ClassLabel(names=["pos", "neg", "mid"]))
    assert head_label_kwargs(placeholder, class_label, "label")["id2label"] == {0: "pos", 1: "neg", 2: "mid"}
    integers = Dataset.from_dict({"text": ["a", "b"], "label": [0, 4]})
    assert head_label_kwargs(placeholder, integers, "label") == {"num_labels": 5}
    # Left to the checkpoint: it names its classes, there is no label column, or the labels are neither (floats,
    # booleans), which the trainer then reports naming the row.
    assert head_label_kwargs(named, strings, "label") == {}
    assert head_label_kwargs(placeholder, strings, "category") == {}
    for values in ([0.5, 1.5], [True, False]):
        assert head_label_kwargs(placeholder, Dataset.from_dict({"text": ["a", "b"], "label": values}), "label") == {}


def test_evaluate_and_predict_take_raw_text(tmp_path, tokenizer):
    held_out = toy_dataset(24, seed=5)
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(tmp_path, self_training_rounds=0, max_steps=4),
        train_dataset=toy_dataset(16),
        eval_dataset=held_out,
        processing_class=tokenizer,
    )
    trainer.train()
    stored = trainer.evaluate()  # the eval set the constructor tokenized
    raw = trainer.evaluate(held_out)
    assert {k: v for k, v in raw.items() if k in ("eval_loss", "eval_accuracy", "eval_f1")} == {
        k: v for k, v in stored.items() if k in ("eval_loss", "eval_accuracy", "eval_f1")
    }
    assert trainer.evaluate({"dev": held_out})["eval_dev_accuracy"] == stored["eval_accuracy"]

    with_labels = trainer.predict(held_out)
    assert with_labels.predictions.shape == (24, 2) and with_labels.metrics["test_accuracy"] == stored["eval_accuracy"]
    texts_only = trainer.predict(held_out.remove_columns("label"))
    np.testing.assert_allclose(texts_only.predictions, with_labels.predictions, rtol=1e-6)
    assert texts_only.label_ids is None


def test_logs_follow_one_step_counter_across_rounds(tmp_path, tokenizer):
    # TensorBoard and W&B plot each log at `state.global_step`: every round's `Trainer.train()` restarts it at 0, so
    # without an offset the rounds' curves were drawn over each other.
    class RecordSteps(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.steps.append((state.global_step, dict(logs)))

    recorder = RecordSteps()
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(tmp_path, self_training_rounds=2, logging_steps=1, confidence_threshold=0.01),
        train_dataset=toy_dataset(16),
        eval_dataset=toy_dataset(16, seed=1),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(32, seed=2),
        callbacks=[recorder],
    )
    trainer.train()
    steps = [r["train_steps"] for r in trainer.self_training_history]
    assert len(steps) == 3 and min(steps) > 0
    loss_steps = [step for step, logs in recorder.steps if "loss" in logs]
    assert loss_steps == list(range(1, sum(steps) + 1))
    round_ends = [(step, logs["self_training_round"]) for step, logs in recorder.steps if "num_pseudo_labels" in logs]
    assert round_ends == [(sum(steps[: r + 1]), r) for r in range(3)]
    # The round's own counter is untouched: checkpoints and resume count it.
    assert trainer.state.global_step == steps[-1]
    # A log after training (here an evaluation) comes at the run's last step.
    trainer.evaluate()
    assert recorder.steps[-1][0] == sum(steps) and "eval_loss" in recorder.steps[-1][1]
