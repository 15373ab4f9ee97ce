"""
`Trainer`'s contract, kept by `SemiSupervisedTrainer` without self-training: each scenario runs `transformers.Trainer`
and `SemiSupervisedTrainer(self_training_rounds=0)` side by side, as transformers' own Trainer tests exercise it
(regression models and datasets that are plain torch objects, iterable datasets, `model_init`, evaluation- and
prediction-only use, gradient accumulation, evaluation strategies, resume), and asserts the same outcome: the same
weights, the same `log_history` (timings aside), the same metrics. The intended differences are in the README.
"""

import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer
from hf_semisup.metrics import compute_classification_metrics


TIMING = ("_runtime", "_per_second", "_preparation_time")


class LinearRegression(nn.Module):
    """`y = a * x + b`, MSE loss: a plain module, its `config` `None` (as transformers' Trainer tests write theirs)."""

    def __init__(self, a=0.0, b=0.0):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))
        self.config = None

    def forward(self, input_x, labels=None, **kwargs):
        y = input_x * self.a + self.b
        return (y,) if labels is None else (nn.functional.mse_loss(y, labels), y)


class NoisyLine(Dataset):
    """`y = 2 x + 3 + noise`: rows of `{"input_x", "labels"}`, a map-style torch dataset."""

    def __init__(self, length=48, seed=0):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=length).astype(np.float32)
        self.y = (2 * self.x + 3 + rng.normal(scale=0.1, size=length)).astype(np.float32)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_x": self.x[i], "labels": self.y[i]}


class NoisyLineStream(IterableDataset):
    def __init__(self, length=48, seed=0):
        self.rows = NoisyLine(length, seed)

    def __iter__(self):
        for i in range(len(self.rows)):
            yield self.rows[i]


def arguments(cls, output_dir, **kwargs):
    defaults = dict(
        output_dir=str(output_dir),
        report_to="none",
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=0.1,
        num_train_epochs=3,
        logging_steps=2,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
    )
    return cls(**{**defaults, **kwargs})


def both(tmp_path, model=LinearRegression, **kwargs):
    """`Trainer` and `SemiSupervisedTrainer` with the same settings (`args` keywords and `Trainer` arguments)."""
    names = ("train_dataset", "eval_dataset", "model_init", "data_collator", "compute_metrics")
    trainer_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    trainers = []
    for cls, args_cls in ((Trainer, TrainingArguments), (SemiSupervisedTrainer, SemiSupervisedConfig)):
        extra = {"self_training_rounds": 0} if args_cls is SemiSupervisedConfig else {}
        args = arguments(args_cls, tmp_path / cls.__name__, **kwargs, **extra)
        torch.manual_seed(0)
        built = None if "model_init" in trainer_kwargs else model()
        trainers.append(cls(model=built, args=args, **trainer_kwargs))
    return trainers


def logs(trainer):
    return [{k: v for k, v in entry.items() if not k.endswith(TIMING)} for entry in trainer.state.log_history]


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_training(plain, ours):
    assert logs(ours) == logs(plain)
    for name, value in weights(plain).items():
        torch.testing.assert_close(weights(ours)[name], value, rtol=0, atol=0)
    assert "train_loss" in ours.state.log_history[-1]  # `Trainer`'s summary ends the log


@pytest.mark.parametrize(
    "settings",
    [
        {},  # a map-style torch dataset, a module without a config
        {"gradient_accumulation_steps": 2},
        {"max_steps": 5},
        {"eval_strategy": "steps", "eval_steps": 4},
        {"eval_strategy": "epoch", "load_best_model_at_end": True, "save_strategy": "epoch"},
        {"eval_strategy": "no"},  # with an eval set: never evaluated
        {"lr_scheduler_type": "cosine", "warmup_steps": 2, "weight_decay": 0.01},
    ],
)
def test_training_matches_trainer(tmp_path, settings):
    plain, ours = both(tmp_path, train_dataset=NoisyLine(), eval_dataset=NoisyLine(16, seed=1), **settings)
    plain.train()
    ours.train()
    assert_same_training(plain, ours)
    if settings.get("eval_strategy", "no") == "no":
        assert not [entry for entry in ours.state.log_history if "eval_loss" in entry]
    if settings.get("load_best_model_at_end"):
        assert os.path.basename(ours.state.best_model_checkpoint) == os.path.basename(
            plain.state.best_model_checkpoint
        )
    assert untimed(ours.evaluate()) == untimed(plain.evaluate())


def untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith(TIMING)}


def test_an_iterable_train_set_trains_max_steps(tmp_path):
    plain, ours = both(tmp_path, train_dataset=NoisyLineStream(), max_steps=9)
    plain.train()
    output = ours.train()
    assert output.global_step == 9 and ours.self_training_history[0]["num_train_examples"] is None
    assert_same_training(plain, ours)


def test_model_init_without_a_model(tmp_path):
    plain, ours = both(tmp_path, train_dataset=NoisyLine(), model_init=lambda: LinearRegression(0.5, -0.5))
    plain.train()
    ours.train()
    assert_same_training(plain, ours)


def test_min_steps_per_round_does_not_stretch_a_plain_run(tmp_path):
    # 48 rows, batch 8, 3 epochs: 18 steps asked; `min_steps_per_round` (100 by default) stretches self-training rounds.
    _, ours = both(tmp_path, train_dataset=NoisyLine())
    assert ours.args.min_steps_per_round == 100
    assert ours.train().global_step == 18 == 3 * math.ceil(48 / 8)


def test_evaluate_and_predict_without_a_train_set(tmp_path):
    plain, ours = both(tmp_path, eval_dataset=NoisyLine(16, seed=1))
    assert untimed(ours.evaluate()) == untimed(plain.evaluate())
    expected, got = plain.predict(NoisyLine(8, seed=2)), ours.predict(NoisyLine(8, seed=2))
    np.testing.assert_array_equal(got.predictions, expected.predictions)
    assert untimed(got.metrics) == untimed(expected.metrics)
    with pytest.raises(ValueError, match="requires a train_dataset"):
        ours.train()  # as `Trainer` says it


@pytest.mark.parametrize("checkpoint", ["checkpoint-5", "checkpoint-10"])
def test_resume_matches_trainers_resume(tmp_path, checkpoint):
    # Saved every 5 steps, evaluated every 3: each resumed run logs what `Trainer` resumed logs (its loss averages
    # restart at the resume), and ends with the uninterrupted run's weights and evaluations.
    settings = dict(save_strategy="steps", save_steps=5, eval_strategy="steps", eval_steps=3, max_steps=12)
    outcomes = []
    for resume in (False, True):
        plain, ours = both(tmp_path, train_dataset=NoisyLine(), eval_dataset=NoisyLine(16, seed=1), **settings)
        for trainer in (plain, ours):
            trainer.train(resume_from_checkpoint=f"{trainer.args.output_dir}/{checkpoint}" if resume else None)
        assert_same_training(plain, ours)
        outcomes.append(([entry for entry in logs(ours) if "eval_loss" in entry], weights(ours)))
    (uninterrupted_evals, uninterrupted_weights), (resumed_evals, resumed_weights) = outcomes
    assert resumed_evals == uninterrupted_evals
    for name, value in uninterrupted_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=0, atol=0)


def test_a_tokenized_torch_dataset_and_a_classifier(tmp_path):
    from conftest import make_model

    rng = np.random.default_rng(0)
    rows = [{"input_ids": rng.integers(5, 35, 12).tolist(), "labels": int(rng.integers(0, 2))} for _ in range(32)]

    class Rows(Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return {k: torch.tensor(v) for k, v in rows[i].items()}

    plain, ours = both(tmp_path, model=make_model, train_dataset=Rows(), eval_dataset=Rows(), learning_rate=5e-3)
    plain.train()
    ours.train()
    assert_same_training(plain, ours)


@pytest.mark.parametrize("eval_strategy", ["no", "steps"])
def test_a_tokenized_datasets_dataset_and_a_classifier(tmp_path, tokenizer, eval_strategy):
    # A `datasets.Dataset` the trainer also takes for self-training: the run asks for 12 steps (default
    # `min_steps_per_round` stretched it to 100), logs no round record after `Trainer`'s summary, and evaluates only
    # when `eval_strategy` says (a round-end evaluation was logged even with "no").
    from conftest import make_model, toy_dataset

    def tokenized(n, seed):
        rows = toy_dataset(n, seed=seed).map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
        rows = rows.map(lambda b: {"labels": [{"negative": 0, "positive": 1}[x] for x in b["label"]]}, batched=True)
        return rows.remove_columns("label")

    plain, ours = both(
        tmp_path, model=make_model, train_dataset=tokenized(32, 0), eval_dataset=tokenized(16, 1), learning_rate=5e-3,
        eval_strategy=eval_strategy, eval_steps=5, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_classification_metrics,  # a classifier's default here (an intended difference)
    )  # fmt: skip
    plain.train()
    ours.train()
    assert ours.state.global_step == 12
    assert_same_training(plain, ours)
