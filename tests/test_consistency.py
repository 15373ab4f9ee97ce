import copy
import math
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import DataCollatorWithPadding, TrainerCallback

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer
from hf_semisup.config import DEFAULT_CONSISTENCY_WEIGHT
from hf_semisup.consistency import (
    CONSISTENCY_KEY,
    TokenDropout,
    UnlabeledBatchSampler,
    clean_view_targets,
    consistency_divergence,
    consistency_weight_at,
    derive_seed,
)


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import FILLER, NEGATIVE, POSITIVE, make_model, tiny_config, toy_dataset  # noqa: E402


LOGGED_KEYS = ("consistency_loss", "consistency_weight", "consistency_mask_rate", "token_dropout_rate")


def deterministic_model(**kwargs):
    # No dropout, so runs differ only by what is under test; a wide init so predictions (and the term) are not flat.
    return make_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.5, **kwargs)


def unlabeled_pool():
    return toy_dataset(64, seed=1)


def median_confidence(tokenizer) -> float:
    """The median clean-text top probability of the initial model on the pool: a mask that lets about half through."""
    model = deterministic_model().eval()
    with torch.no_grad():
        inputs = tokenizer(list(unlabeled_pool()["text"]), padding=True, return_tensors="pt")
        return torch.softmax(model(**inputs).logits, -1).max(-1).values.median().item()


def consistency_trainer(output_dir, tokenizer, model=None, unlabeled=True, **overrides):
    """A trainer whose steps are deterministic and comparable: plain SGD, constant rate, no clipping, no dropout."""
    config = dict(
        self_training_rounds=0,
        consistency_weight=5.0,
        token_dropout=0.3,
        max_steps=2,
        optim="sgd",
        learning_rate=0.1,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=1,
    )
    config.update(overrides)
    return SemiSupervisedTrainer(
        model if model is not None else deterministic_model(),
        tiny_config(output_dir, **config),
        train_dataset=toy_dataset(32),
        processing_class=tokenizer,
        unlabeled_dataset=unlabeled_pool() if unlabeled else None,
    )


def flat_parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def long_batch(tokenizer, rows=2000, seed=0):
    rng = random.Random(seed)
    words = POSITIVE + NEGATIVE + FILLER
    texts = [" ".join(rng.choices(words, k=rng.randint(5, 60))) for _ in range(rows)]
    return dict(DataCollatorWithPadding(tokenizer)([tokenizer(t) for t in texts]))


def seeds_for(batch, seed=0):
    return [derive_seed(seed, row) for row in range(len(batch["input_ids"]))]


# ---- Configuration ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("consistency_weight", -0.5),
        ("consistency_weight", float("nan")),
        ("token_dropout", 1.0),
        ("token_dropout", -0.1),
        ("token_dropout_mode", "drop"),
        ("consistency_loss", "js"),
        ("consistency_temperature", 0.0),
        ("consistency_confidence", 1.5),
        ("consistency_rampup_steps", -1),
        ("consistency_rampup_steps", 2.5),
        ("unlabeled_batch_ratio", 0),
        ("unlabeled_batch_ratio", "3"),
    ],
)
def test_config_rejects_bad_values(tmp_path, field, value):
    with pytest.raises(ValueError) as error:
        SemiSupervisedConfig(output_dir=str(tmp_path), report_to="none", **{field: value})
    assert f"`{field}`" in str(error.value) and repr(value) in str(error.value)


def test_consistency_needs_unlabeled_dataset_and_tokenizer(tmp_path, tokenizer):
    with pytest.raises(ValueError, match=r"`unlabeled_dataset` is required .*consistency_weight=5.0"):
        consistency_trainer(tmp_path, tokenizer, unlabeled=False)
    with pytest.raises(ValueError, match=r"`processing_class`"):
        tokenized = toy_dataset(16).map(lambda b: tokenizer(b["text"]), batched=True).remove_columns("text")
        pool = toy_dataset(16, seed=1).map(lambda b: tokenizer(b["text"]), batched=True)
        SemiSupervisedTrainer(
            deterministic_model(),
            tiny_config(tmp_path, self_training_rounds=0, consistency_weight=1.0),
            train_dataset=tokenized,
            unlabeled_dataset=pool.remove_columns(["text", "label"]),
        )


@pytest.mark.parametrize(
    "pool, tokenizer_given, loss_func, expected",
    [
        ("dataset", True, False, DEFAULT_CONSISTENCY_WEIGHT),
        ("stream", True, False, 0.0),  # the unlabeled sampler needs a Dataset
        ("dataset", False, False, 0.0),  # nothing to drop tokens with
        ("dataset", True, True, 0.0),  # a loss of the caller's own
        (None, True, False, 0.0),  # supervised-only: a plain run
    ],
)
def test_unset_weight_is_chosen_from_the_pool(tmp_path, tokenizer, pool, tokenizer_given, loss_func, expected):
    labeled, unlabeled = toy_dataset(16), toy_dataset(16, seed=1)
    if not tokenizer_given:  # pre-tokenized data and a collator of their own
        labeled = labeled.map(lambda b: tokenizer(b["text"]), batched=True).remove_columns("text")
        unlabeled = unlabeled.map(lambda b: tokenizer(b["text"]), batched=True).remove_columns(["text", "label"])
    if pool == "stream":
        unlabeled = unlabeled.to_iterable_dataset()
    config = tiny_config(tmp_path, self_training_rounds=0 if pool is None else 1, consistency_weight=None)
    trainer = SemiSupervisedTrainer(
        deterministic_model(),
        config,
        data_collator=None if tokenizer_given else DataCollatorWithPadding(tokenizer),
        train_dataset=labeled,
        processing_class=tokenizer if tokenizer_given else None,
        compute_loss_func=(lambda outputs, labels, num_items_in_batch=None: outputs.loss) if loss_func else None,
        unlabeled_dataset=None if pool is None else unlabeled,
    )
    assert config.consistency_weight == expected  # written back: the model card and history show what ran
    assert (trainer.consistency is not None) == (expected > 0)


def test_a_config_reused_for_another_trainer_chooses_again(tmp_path, tokenizer):
    config = tiny_config(tmp_path, self_training_rounds=1, consistency_weight=None)
    pool = toy_dataset(16, seed=1)
    for unlabeled, expected in ((pool, DEFAULT_CONSISTENCY_WEIGHT), (pool.to_iterable_dataset(), 0.0)):
        SemiSupervisedTrainer(
            deterministic_model(),
            config,
            train_dataset=toy_dataset(16),
            processing_class=tokenizer,
            unlabeled_dataset=unlabeled,
        )
        assert config.consistency_weight == expected


def test_unset_weight_is_off_for_a_tokenizer_without_padding(tmp_path, tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = None  # as GPT-2's; the collator pads with a caller's own
    labeled = toy_dataset(16).map(lambda b: tokenizer(b["text"]), batched=True)
    config = tiny_config(tmp_path, self_training_rounds=1, consistency_weight=None)
    trainer = SemiSupervisedTrainer(
        deterministic_model(),
        config,
        data_collator=lambda features: features,  # never called: nothing trains here
        train_dataset=labeled,
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(16, seed=1),
    )
    assert config.consistency_weight == 0.0 and trainer.consistency is None


def test_one_output_head_gets_no_consistency_loss_unless_asked_and_then_an_error(tmp_path, tokenizer):
    """A head with one output has no class distribution to keep consistent: unset, the weight is 0; set, an error."""
    labeled = toy_dataset(16, names=("only", "only"))
    pool = toy_dataset(16, seed=1).remove_columns("label")
    config = tiny_config(tmp_path, self_training_rounds=0, consistency_weight=None)
    trainer = SemiSupervisedTrainer(
        make_model(num_labels=1), config, train_dataset=labeled, processing_class=tokenizer, unlabeled_dataset=pool
    )
    assert config.consistency_weight == 0.0 and trainer.consistency is None
    with pytest.raises(
        ValueError, match="`consistency_weight` > 0 needs a classifier with >= 2 labels.*`num_labels`=1"
    ):
        SemiSupervisedTrainer(
            make_model(num_labels=1),
            tiny_config(tmp_path, self_training_rounds=0, consistency_weight=1.0),
            train_dataset=labeled,
            processing_class=tokenizer,
            unlabeled_dataset=pool,
        )


# ---- Token dropout ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["mask", "delete"])
@pytest.mark.parametrize("probability", [0.1, 0.5])
def test_token_dropout_rate_matches_probability(tokenizer, mode, probability):
    batch = long_batch(tokenizer)
    _, dropped, droppable = TokenDropout.from_tokenizer(tokenizer, probability, mode)(batch, seeds_for(batch))
    assert droppable > 50_000
    assert abs(dropped / droppable - probability) < 0.005


def test_mask_mode_never_touches_special_tokens_or_padding(tokenizer):
    batch = long_batch(tokenizer, rows=300)
    out, dropped, _ = TokenDropout.from_tokenizer(tokenizer, 0.9, "mask")(batch, seeds_for(batch))
    ids, new_ids = batch["input_ids"], out["input_ids"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids)) | ~batch["attention_mask"].bool()
    assert torch.equal(new_ids[special], ids[special])
    changed = new_ids != ids
    assert int(changed.sum()) == dropped > 0
    assert (new_ids[changed] == tokenizer.mask_token_id).all()
    assert torch.equal(out["attention_mask"], batch["attention_mask"])


def test_mask_mode_falls_back_to_unk_then_refuses():
    stub = dict(all_special_ids=[0, 1, 2, 3], pad_token_id=0, mask_token_id=None, unk_token_id=1, padding_side="right")
    assert TokenDropout.from_tokenizer(SimpleNamespace(**stub), 0.2, "mask").replacement_id == 1
    with pytest.raises(ValueError, match="`token_dropout_mode`='mask'"):
        TokenDropout.from_tokenizer(SimpleNamespace(**{**stub, "unk_token_id": None}), 0.2, "mask")
    TokenDropout.from_tokenizer(SimpleNamespace(**{**stub, "unk_token_id": None}), 0.2, "delete")


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_delete_mode_keeps_attention_masks_consistent(tokenizer, padding_side):
    tokenizer.padding_side = padding_side
    batch = long_batch(tokenizer, rows=300)
    seeds = seeds_for(batch)
    masked, _, _ = TokenDropout.from_tokenizer(tokenizer, 0.4, "mask")(batch, seeds)
    deleted, dropped, _ = TokenDropout.from_tokenizer(tokenizer, 0.4, "delete")(batch, seeds)
    assert dropped > 0 and deleted["input_ids"].shape[1] < batch["input_ids"].shape[1]
    for row in range(len(seeds)):
        real = batch["attention_mask"][row].bool()
        # Same seeds, same positions: "delete" keeps exactly the tokens "mask" leaves alone, in order.
        kept = batch["input_ids"][row][real & (masked["input_ids"][row] == batch["input_ids"][row])]
        attention = deleted["attention_mask"][row].bool()
        assert torch.equal(deleted["input_ids"][row][attention], kept)
        assert (deleted["input_ids"][row][~attention] == tokenizer.pad_token_id).all()
        assert (deleted["token_type_ids"][row][~attention] == 0).all()
        # The attended tokens are contiguous, on the side opposite the padding.
        expected = torch.zeros_like(attention)
        if padding_side == "right":
            expected[: len(kept)] = True
        else:
            expected[len(expected) - len(kept) :] = True
        assert torch.equal(attention, expected)
        assert kept[0] == tokenizer.cls_token_id and kept[-1] == tokenizer.sep_token_id


def test_same_seed_same_positions_whatever_the_batch(tokenizer):
    batch = long_batch(tokenizer, rows=50)
    dropout = TokenDropout.from_tokenizer(tokenizer, 0.3, "mask")
    first, _, _ = dropout(batch, seeds_for(batch))
    again, _, _ = dropout(batch, seeds_for(batch))
    other, _, _ = dropout(batch, seeds_for(batch, seed=1))
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert not torch.equal(first["input_ids"], other["input_ids"])
    # A row alone (less padding) drops the same positions as in the big batch.
    row = 7
    alone = dict(
        DataCollatorWithPadding(tokenizer)(
            [{"input_ids": batch["input_ids"][row][batch["attention_mask"][row].bool()]}]
        )
    )
    alone_out, _, _ = dropout(alone, [seeds_for(batch)[row]])
    length = alone["input_ids"].shape[1]
    assert torch.equal(alone_out["input_ids"][0], first["input_ids"][row][:length])


def test_unlabeled_sampler_shards_and_reshuffles():
    samplers = [UnlabeledBatchSampler(20, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    # Stream order: batch 0 of rank 0, batch 0 of rank 1, batch 1 of rank 0, ...
    stream = [row for k in range(7) for sampler in samplers for row in sampler.indices(k)]
    first_pass, second_pass = stream[:20], stream[20:40]
    assert sorted(first_pass) == list(range(20))  # every row once per pass, split across the processes
    assert sorted(second_pass) == list(range(20)) and second_pass != first_pass
    restarted = UnlabeledBatchSampler(20, 3, seed=5, rank=1, world_size=2, start=4)
    assert next(iter(restarted)) == samplers[1].indices(4)


# ---- Divergence ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_gradient_flows_only_through_the_dropped_branch(kind):
    clean_logits = torch.randn(6, 3, requires_grad=True)
    dropped_logits = torch.randn(6, 3, requires_grad=True)
    target, mask = clean_view_targets(clean_logits, temperature=0.5, confidence=0.0)
    assert mask.all() and not target.requires_grad
    # Even a target that still carries a graph gets no gradient.
    live_target = torch.log_softmax(clean_logits, -1)
    (
        consistency_divergence(target, dropped_logits, kind).sum()
        + consistency_divergence(live_target, dropped_logits, kind).sum()
    ).backward()
    assert clean_logits.grad is None
    assert dropped_logits.grad is not None and dropped_logits.grad.abs().sum() > 0


def test_kl_matches_definition_and_sharpening():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    target, _ = clean_view_targets(logits, temperature=0.5, confidence=0.0)
    assert torch.allclose(target.exp(), torch.softmax(logits / 0.5, -1))
    other = torch.tensor([[0.0, 1.0, 0.0]])
    p, q = torch.softmax(logits / 0.5, -1), torch.softmax(other, -1)
    assert torch.allclose(consistency_divergence(target, other, "kl"), (p * (p / q).log()).sum(-1))
    assert torch.allclose(consistency_divergence(target, other, "mse"), ((p - q) ** 2).sum(-1))
    _, mask = clean_view_targets(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), temperature=1.0, confidence=0.9)
    assert mask.tolist() == [False, True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_divergence_stays_finite_on_extreme_logits(dtype, kind):
    clean = torch.tensor([[3e4, -3e4], [-6e4, 6e4], [0.0, 0.0]], dtype=dtype)
    dropped = torch.tensor([[-6e4, 6e4], [6e4, -6e4], [6e4, 0.0]], dtype=dtype, requires_grad=True)
    target, _ = clean_view_targets(clean, temperature=0.1, confidence=0.0)
    divergence = consistency_divergence(target, dropped, kind)
    assert divergence.dtype == torch.float32 and torch.isfinite(divergence).all()
    assert divergence[0] > (1e4 if kind == "kl" else 1.0)
    divergence.sum().backward()
    assert torch.isfinite(dropped.grad).all()


# ---- Training --------------------------------------------------------------------------------------------------------
def test_weight_follows_the_rampup(tmp_path, tokenizer):
    assert [consistency_weight_at(s, 2.0, 4) for s in (0, 1, 2, 4, 10)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert consistency_weight_at(0, 2.0, 0) == 2.0
    trainer = consistency_trainer(tmp_path, tokenizer, consistency_weight=2.0, consistency_rampup_steps=4, max_steps=6)
    trainer.train()
    logged = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["consistency_weight"] for log in logged] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    for log in logged:
        assert set(LOGGED_KEYS) <= set(log) and all(math.isfinite(log[k]) for k in LOGGED_KEYS)
        assert 0.0 < log["token_dropout_rate"] < 0.6 and log["consistency_mask_rate"] == 1.0


def test_zero_weight_is_exactly_training_without_the_term(tmp_path, tokenizer):
    def train(**config):
        model = make_model()  # with dropout: the term must not even consume random numbers
        trainer = consistency_trainer(tmp_path, tokenizer, model=model, optim="adamw_torch", max_steps=3, **config)
        trainer.train()
        return trainer

    off = train(consistency_weight=0.0, token_dropout=0.5, unlabeled_batch_ratio=3.0)
    plain = train(consistency_weight=0.0, unlabeled=False)
    assert off.consistency is None
    assert torch.equal(flat_parameters(off.model), flat_parameters(plain.model))
    on = train(consistency_weight=1.0)
    assert not torch.equal(flat_parameters(on.model), flat_parameters(plain.model))


@pytest.mark.parametrize("mode", ["mask", "delete"])
def test_gradient_accumulation_matches_the_big_batch(tmp_path, tokenizer, mode):
    # A mask that lets about half through: each micro-batch passes a different number of examples, so this holds only if
    # the mean over unmasked examples is taken over the whole accumulated batch.
    confidence = median_confidence(tokenizer)
    common = dict(max_steps=1, consistency_weight=50.0, consistency_confidence=confidence, token_dropout_mode=mode)
    big = consistency_trainer(tmp_path, tokenizer, per_device_train_batch_size=8, **common)
    big.train()
    accumulated = consistency_trainer(
        tmp_path, tokenizer, per_device_train_batch_size=4, gradient_accumulation_steps=2, **common
    )
    accumulated.train()
    without_term = consistency_trainer(
        tmp_path, tokenizer, per_device_train_batch_size=8, **{**common, "consistency_weight": 1e-9}
    )
    without_term.train()

    assert 0.0 < big.state.log_history[0]["consistency_mask_rate"] < 1.0
    initial = flat_parameters(deterministic_model())
    big_update = flat_parameters(big.model) - initial
    accumulated_update = flat_parameters(accumulated.model) - initial
    term = flat_parameters(big.model) - flat_parameters(without_term.model)
    assert term.norm() > 0.05 * big_update.norm()  # the consistency term is a real part of the update
    assert (big_update - accumulated_update).norm() < 1e-4 * big_update.norm()
    assert big.state.log_history[0]["loss"] == pytest.approx(accumulated.state.log_history[0]["loss"], rel=1e-5)


def test_one_gradient_forward_per_micro_batch(tmp_path, tokenizer):
    trainer = consistency_trainer(tmp_path, tokenizer, gradient_accumulation_steps=2, unlabeled_batch_ratio=0.5)
    calls = []
    trainer.model.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(
            (torch.is_grad_enabled(), module.training, kwargs["input_ids"].shape[0])
        ),
        with_kwargs=True,
    )
    trainer.train()
    # Per step: two no-grad eval-mode clean forwards of 4 unlabeled rows, then one forward with gradients per micro-batch
    # on its 8 labeled + 4 dropped rows.
    step = [(False, False, 4), (False, False, 4), (True, True, 12), (True, True, 12)]
    assert calls == step * 2


@pytest.mark.parametrize("mode", ["mask", "delete"])
def test_bf16_autocast_gives_finite_losses_and_weights(tmp_path, tokenizer, mode):
    trainer = consistency_trainer(
        tmp_path, tokenizer, bf16=True, max_steps=4, token_dropout_mode=mode, consistency_temperature=0.4
    )
    dtypes = []
    trainer.model.classifier.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    trainer.train()
    assert set(dtypes) == {torch.bfloat16}  # both the clean and the joint forward ran under autocast
    logged = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logged) == 4
    assert all(math.isfinite(log[key]) for log in logged for key in ("loss", *LOGGED_KEYS))
    assert torch.isfinite(flat_parameters(trainer.model)).all()
    assert not torch.equal(flat_parameters(trainer.model), flat_parameters(deterministic_model()))


def test_resume_drops_the_same_positions(tmp_path, tokenizer):
    def train(output_dir, resume=None):
        trainer = consistency_trainer(
            output_dir, tokenizer, max_steps=4, save_strategy="steps", save_steps=2, unlabeled_batch_ratio=3.0
        )
        seen = {}
        prepare = trainer.consistency.prepare_step

        def recording_prepare(batch_samples, model, step, round_, device):
            prepare(batch_samples, model, step, round_, device)
            seen[step] = [batch[CONSISTENCY_KEY].inputs["input_ids"].clone() for batch in batch_samples]

        trainer.consistency.prepare_step = recording_prepare
        trainer.train(resume_from_checkpoint=resume)
        return trainer, seen

    full, full_seen = train(tmp_path / "full")
    resumed, resumed_seen = train(tmp_path / "full", resume=str(tmp_path / "full" / "checkpoint-2"))
    assert sorted(full_seen) == [0, 1, 2, 3] and sorted(resumed_seen) == [2, 3]
    for step in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(full_seen[step], resumed_seen[step]))
    assert not torch.equal(full_seen[2][0], full_seen[3][0])
    assert torch.allclose(flat_parameters(full.model), flat_parameters(resumed.model), atol=1e-6)


def test_consistency_in_every_self_training_round(tmp_path, tokenizer):
    trainer = consistency_trainer(
        tmp_path, tokenizer, self_training_rounds=1, confidence_threshold=0.5, class_balance=False, max_steps=3
    )
    logs = []
    trainer.add_callback(LogRecorder(logs))
    trainer.train()
    assert trainer.self_training_history[1]["num_pseudo_labels"] > 0
    rounds = [log["self_training_round"] for log in logs if "self_training_round" in log]
    steps = [log for log in logs if "loss" in log]
    assert rounds == [0, 1] and len(steps) == 6
    for log in steps:
        assert set(LOGGED_KEYS) <= set(log) and log["consistency_loss"] > 0


class LogRecorder(TrainerCallback):
    def __init__(self, logs):
        self.logs = logs

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_two_process_training(tmp_path, tokenizer):
    confidence = median_confidence(tokenizer)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "consistency_ddp_run.py")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2"]
    completed = subprocess.run(
        [*command, script, str(tmp_path), str(confidence)], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    # The reference: one process with the batch of both.
    reference = consistency_trainer(tmp_path / "single", tokenizer, consistency_confidence=confidence)
    drawn = []
    draw = reference.consistency.unlabeled_batch
    reference.consistency.unlabeled_batch = lambda k, r: (
        draw(k, r),
        drawn.append(reference.consistency.sampler.indices(k)),
    )[0]
    reference.train()

    for k in range(2):  # each step, the processes draw disjoint halves of what one process with both batches draws
        rows = [r["rows"][k] for r in ranks]
        assert not set(rows[0]) & set(rows[1]) and rows[0] + rows[1] == drawn[k]
    expected = reference.model.state_dict()
    for rank in ranks:
        for name, value in rank["parameters"].items():
            assert torch.allclose(value, expected[name], atol=1e-5), name
    logged = [log for log in ranks[0]["log_history"] if "loss" in log]
    reference_logged = [log for log in reference.state.log_history if "loss" in log]
    assert len(logged) == 2 and 0.0 < logged[0]["consistency_mask_rate"] < 1.0
    for log, reference_log in zip(logged, reference_logged):
        for key in ("loss", *LOGGED_KEYS):
            assert log[key] == pytest.approx(reference_log[key], rel=1e-4, abs=1e-6), key
