"""Adaptive and top-k selection, soft pseudo-labels: the pure functions, the config, and one short run of each."""

import json
import os
from unittest import mock

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, tiny_config, toy_dataset

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer
from hf_semisup.checkpointing import load_selection, save_selection
from hf_semisup.consistency import CONSISTENCY_KEY
from hf_semisup.pseudo_labeling import PseudoLabels
from hf_semisup.pseudo_labeling import read_pseudo_label_table as load_pseudo_labels
from hf_semisup.pseudo_labeling import select_pseudo_labels as reexported
from hf_semisup.pseudo_labeling import write_pseudo_label_table as save_pseudo_labels
from hf_semisup.rounds import RoundLoop
from hf_semisup.selection import (
    ADAPTIVE_FLOOR_MARGIN,
    SELECTION_RULES,
    Selection,
    SelectionContext,
    SelectionRule,
    adaptive_class_thresholds,
    apply_rule,
    apportion,
    normalized_entropy,
    select,
    select_pseudo_labels,
    select_top_k,
)
from hf_semisup.soft_labels import SOFT_TARGETS_COLUMN, TARGET_WEIGHT_COLUMN, one_hot_targets, soft_cross_entropy


def teacher(counts, seed=0):
    """`counts[c] = (confident rows, unconfident rows)` of class c: confidences 0.95-1 and 0.6-0.85, shuffled."""
    rng = np.random.default_rng(seed)
    labels, confidences = [], []
    for c, (confident, unconfident) in enumerate(counts):
        labels += [c] * (confident + unconfident)
        confidences += list(rng.uniform(0.95, 1.0, confident)) + list(rng.uniform(0.6, 0.85, unconfident))
    order = rng.permutation(len(labels))
    return np.asarray(labels)[order], np.asarray(confidences, dtype=np.float32)[order]


# ---- Adaptive ---------------------------------------------------------------------------------------------------------
def test_adaptive_thresholds_follow_each_class_learning_status():
    # Class 0 is learned (100 confident rows), class 1 half (60), class 2 barely (10); 80 rows are unconfident.
    labels, confidences = teacher([(100, 0), (60, 30), (10, 50)])
    thresholds = adaptive_class_thresholds(labels, confidences, 0.9, num_labels=3)
    beta = np.array([100, 60, 10]) / 100  # max sigma (100) > unconfident rows (80): no warm-up
    expected = np.maximum(beta / (2 - beta) * 0.9, 1 / 3 + ADAPTIVE_FLOOR_MARGIN)
    np.testing.assert_allclose(thresholds, expected)
    assert thresholds[0] == pytest.approx(0.9)  # the best-learned class keeps the fixed threshold
    assert thresholds[0] > thresholds[1] > thresholds[2] == pytest.approx(1 / 3 + ADAPTIVE_FLOOR_MARGIN)


def test_adaptive_warm_up_normalizes_by_the_unconfident_rows():
    # 300 unconfident rows outnumber the best class's 100 confident ones: every threshold stays low.
    labels, confidences = teacher([(100, 150), (50, 150)])
    thresholds = adaptive_class_thresholds(labels, confidences, 0.9, num_labels=2)
    beta = np.array([100, 50]) / 300
    np.testing.assert_allclose(thresholds, np.maximum(beta / (2 - beta) * 0.9, 0.5 + ADAPTIVE_FLOOR_MARGIN))
    assert thresholds[0] < 0.9


def test_adaptive_thresholds_of_an_empty_pool_are_the_floor():
    thresholds = adaptive_class_thresholds(np.zeros(0, np.int64), np.zeros(0, np.float32), 0.9, num_labels=4)
    np.testing.assert_allclose(thresholds, 0.25 + ADAPTIVE_FLOOR_MARGIN)


def test_adaptive_selection_keeps_the_lagging_class_rows_above_its_own_threshold():
    labels, confidences = teacher([(100, 0), (60, 30), (10, 50)])
    selection = select("adaptive", labels, confidences, num_labels=3, confidence_threshold=0.9)
    thresholds = selection.class_thresholds
    expected = np.flatnonzero(confidences >= thresholds[labels])
    assert sorted(selection.selected.tolist()) == sorted(expected.tolist())
    assert selection.threshold == 0.9
    # More rows than the fixed threshold, all of them from the lagging classes.
    fixed = select("threshold", labels, confidences, num_labels=3, confidence_threshold=0.9).selected
    extra = np.setdiff1d(selection.selected, fixed)
    assert len(extra) > 0 and set(labels[extra].tolist()) <= {1, 2}
    # Class balance and the cap still apply after the per-class thresholds.
    prior = np.array([0.5, 0.25, 0.25])
    balanced = select("adaptive", labels, confidences, num_labels=3, confidence_threshold=0.9, class_prior=prior)
    counts = np.bincount(labels[balanced.selected], minlength=3)
    np.testing.assert_allclose(counts / counts.sum(), prior, atol=0.02)
    capped = select("adaptive", labels, confidences, num_labels=3, confidence_threshold=0.9, max_pseudo_labels=7)
    np.testing.assert_array_equal(capped.selected, selection.selected[:7])


# ---- Top-k ------------------------------------------------------------------------------------------------------------
def test_topk_quotas_follow_the_prior_and_grow_with_the_round():
    rng = np.random.default_rng(3)
    labels = rng.choice(3, size=1000, p=[0.6, 0.3, 0.1])
    confidences = rng.uniform(0.34, 1.0, 1000)
    prior = np.array([0.5, 0.3, 0.2])
    previous = set()
    for round_, expected in [(1, [50, 30, 20]), (2, [100, 60, 40]), (3, [150, 90, 60])]:
        kept = select_top_k(labels, confidences, 0.1, round_, class_prior=prior)
        assert np.bincount(labels[kept], minlength=3).tolist() == expected
        assert np.all(np.diff(confidences[kept]) <= 0), "most confident first"
        for c in range(3):  # each class's most confident rows, no threshold
            of_class = np.sort(confidences[labels == c])[::-1]
            np.testing.assert_array_equal(np.sort(confidences[kept][labels[kept] == c])[::-1], of_class[: expected[c]])
        assert previous <= set(kept.tolist())  # a curriculum: each round keeps the previous round's rows
        previous = set(kept.tolist())


def test_topk_caps_and_short_classes():
    rng = np.random.default_rng(4)
    labels = rng.choice(2, size=200, p=[0.9, 0.1])
    confidences = rng.uniform(0.5, 1.0, 200)
    prior = np.array([0.5, 0.5])
    assert len(select_top_k(labels, confidences, 0.2, 1, class_prior=prior, max_pseudo_labels=10)) == 10
    # Round 4 of 0.3 asks for 120% of the pool: capped at the pool (quotas 100 and 100). Class 1 has fewer rows than its
    # quota: both quotas shrink to what it has, so the kept set stays at the labeled 50/50.
    short = int((labels == 1).sum())
    assert short < 100
    kept = select_top_k(labels, confidences, 0.3, 4, class_prior=prior)
    assert np.bincount(labels[kept], minlength=2).tolist() == [short, short]
    for c in range(2):  # still each class's most confident rows
        np.testing.assert_array_equal(
            np.sort(confidences[kept][labels[kept] == c]), np.sort(confidences[labels == c])[::-1][:short][::-1]
        )
    # A 3-class prior: the quotas keep its proportions when the rarest class sets the total.
    labels3 = np.array([0] * 50 + [1] * 50 + [2] * 3)
    kept = select_top_k(labels3, rng.uniform(0.4, 1.0, 103), 1.0, 1, class_prior=np.array([0.4, 0.4, 0.2]))
    assert np.bincount(labels3[kept], minlength=3).tolist() == [6, 6, 3]
    # A teacher that predicts one class only: nothing is kept, rather than a one-class training set.
    assert len(select_top_k(np.zeros(50, dtype=np.int64), confidences[:50], 0.4, 1, class_prior=prior)) == 0
    # Without class balance: the most confident rows overall.
    kept = select_top_k(labels, confidences, 0.25, 1)
    np.testing.assert_array_equal(kept, np.argsort(-confidences, kind="stable")[:50])


def test_topk_is_deterministic_and_records_its_lowest_confidence():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    confidences = np.full(8, 0.7, dtype=np.float32)  # all tied: pool order decides
    kwargs = dict(num_labels=2, confidence_threshold=0.9, class_prior=np.array([0.5, 0.5]), pseudo_label_fraction=0.5)
    first = select("topk", labels, confidences, round_=1, **kwargs)
    assert sorted(first.selected.tolist()) == [0, 1, 2, 3]  # the first two rows of each class
    np.testing.assert_array_equal(first.selected, select("topk", labels, confidences, round_=1, **kwargs).selected)
    assert first.threshold == pytest.approx(0.7) and first.class_thresholds is None
    assert select("topk", labels[:0], confidences[:0], round_=1, **kwargs).threshold is None


def test_apportion_adds_up_to_the_total():
    for total in (0, 1, 5, 7, 100):
        for shares in ([0.5, 0.5], [1 / 3] * 3, [0.7, 0.2, 0.1]):
            quotas = apportion(total, np.array(shares))
            assert quotas.sum() == total
            assert np.all(np.abs(quotas - total * np.array(shares)) < 1)


def test_select_pseudo_labels_is_reexported():
    assert reexported is select_pseudo_labels


# ---- Config -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value",
    [
        ("selection_strategy", "flexmatch"),
        ("pseudo_label_fraction", 0.0),
        ("pseudo_label_fraction", 1.5),
        ("pseudo_label_fraction", float("nan")),
        ("pseudo_label_fraction", True),
        ("soft_pseudo_labels", "yes"),
    ],
)
def test_config_rejects_bad_values(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"`{field}`.*{value!r}"):
        SemiSupervisedConfig(output_dir=str(tmp_path), report_to="none", **{field: value})


def test_config_defaults_are_the_benchmarks(tmp_path):
    config = SemiSupervisedConfig(output_dir=str(tmp_path), report_to="none")
    assert (config.first_teacher, config.selection_strategy, config.soft_pseudo_labels) == (
        "embeddings",
        "topk",
        False,
    )
    assert (config.pseudo_label_fraction, config.student_epochs) == (0.4, 1.0)


# ---- Soft pseudo-labels: storage and loss -------------------------------------------------------------------------------
def test_full_distribution_round_trips_through_both_files(tmp_path):
    probabilities = torch.softmax(torch.randn(9, 3, generator=torch.Generator().manual_seed(0)), -1)
    top = probabilities.topk(3, dim=-1)
    pseudo_labels = PseudoLabels(
        labels=top.indices[:, 0].numpy(),
        confidences=top.values[:, 0].numpy(),
        top_k_labels=top.indices.numpy(),
        top_k_probabilities=top.values.numpy(),
    )
    np.testing.assert_array_equal(pseudo_labels.probabilities(3), probabilities.numpy())
    with pytest.raises(ValueError, match="top 4 classes"):
        pseudo_labels.probabilities(4)

    save_pseudo_labels(str(tmp_path / "round-1.parquet"), pseudo_labels, selected=np.array([2, 5]))
    loaded, selected = load_pseudo_labels(str(tmp_path / "round-1.parquet"))
    np.testing.assert_array_equal(loaded.probabilities(3), probabilities.numpy())
    assert selected.tolist() == [2, 5]

    path = str(tmp_path / "checkpoint.npz")
    save_selection(path, 1, loaded, Selection(selected, None), loaded.probabilities(3))
    restored, _, _ = load_selection(path, 9)
    # float32 exactly: a resumed round is exact
    np.testing.assert_array_equal(restored.probabilities(3), probabilities.numpy())
    save_selection(path, 1, loaded, Selection(selected, None))
    assert load_selection(path, 9)[0].top_k_labels is None


def test_soft_cross_entropy_of_one_hot_targets_is_the_hard_loss():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    one_hot = F.one_hot(labels, 3).float()
    for smoothing in (0.0, 0.1):
        hard = F.cross_entropy(logits, labels, label_smoothing=smoothing, reduction="none")
        torch.testing.assert_close(soft_cross_entropy(logits, one_hot, torch.ones(6), smoothing), hard)
    halved = soft_cross_entropy(logits, one_hot, torch.full((6,), 0.5))
    torch.testing.assert_close(halved, F.cross_entropy(logits, labels, reduction="none") / 2)


def soft_trainer(tmp_path, tokenizer, **config):
    config = {"self_training_rounds": 1, "soft_pseudo_labels": True, "max_steps": 2, **config}
    return SemiSupervisedTrainer(
        make_model(seed=2),
        tiny_config(tmp_path / "output", **config),
        train_dataset=toy_dataset(16, seed=1),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(24, seed=5),
    )


def one_batch(trainer, dataset):
    return trainer.data_collator([dataset[i] for i in range(8)])


@pytest.mark.parametrize("consistency_weight", [0.0, 0.5])
def test_trainer_loss_with_one_hot_soft_targets_is_the_hard_loss(tmp_path, tokenizer, consistency_weight):
    trainer = soft_trainer(tmp_path, tokenizer, consistency_weight=consistency_weight)
    soft = one_batch(trainer, one_hot_targets(trainer.labeled_dataset, 2))
    hard = {k: v for k, v in soft.items() if k not in (SOFT_TARGETS_COLUMN, TARGET_WEIGHT_COLUMN)}
    if consistency_weight:
        trainer.consistency.prepare_step([hard], trainer.model, 0, 0, torch.device("cpu"))
        soft[CONSISTENCY_KEY] = hard[CONSISTENCY_KEY]
    trainer.model.eval()  # no dropout: both forwards see the same network
    with torch.no_grad():  # compute_loss pops what it uses from its inputs: each call gets its own dict
        soft_loss = trainer.compute_loss(trainer.model, dict(soft))
        hard_loss = trainer.compute_loss(trainer.model, dict(hard))
        # Weights scale each row's term.
        zero_weight_loss = trainer.compute_loss(trainer.model, {**soft, TARGET_WEIGHT_COLUMN: torch.zeros(8)})
    torch.testing.assert_close(soft_loss, hard_loss)
    assert soft_loss > 0
    if not consistency_weight:
        assert zero_weight_loss == 0


def test_soft_path_with_gradient_accumulation_matches_the_hard_path(tmp_path, tokenizer):
    # One-hot targets of weight 1 through the soft path train exactly like the hard labels, accumulation included.
    models = []
    for soft in (False, True):
        trainer = soft_trainer(
            tmp_path / str(soft),
            tokenizer,
            self_training_rounds=0,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            max_steps=2,
        )
        if soft:
            trainer.labeled_dataset = one_hot_targets(trainer.labeled_dataset, 2)
        trainer.train()
        models.append(trainer.model.state_dict())
    for name, value in models[0].items():
        torch.testing.assert_close(models[1][name], value, msg=name)


# ---- One short run per option ---------------------------------------------------------------------------------------------
def changed(trainer, before):
    return any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def read_round_file(tmp_path, round_):
    table = pq.read_table(tmp_path / "output" / "pseudo_labels" / f"round-{round_}.parquet").to_pydict()
    return {k: np.asarray(v) for k, v in table.items()}


def test_adaptive_run(tmp_path, tokenizer):
    trainer = soft_trainer(tmp_path, tokenizer, soft_pseudo_labels=False, selection_strategy="adaptive")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    record = trainer.self_training_history[1]
    assert record["threshold"] == 0.9
    assert set(record["class_thresholds"]) == {"negative", "positive"}
    assert all(0.51 - 1e-9 <= t <= 0.9 + 1e-9 for t in record["class_thresholds"].values())
    rows = read_round_file(tmp_path, 1)
    expected = adaptive_class_thresholds(rows["label"], rows["confidence"], 0.9, 2)
    assert list(record["class_thresholds"].values()) == pytest.approx(expected.tolist())
    assert record["num_pseudo_labels"] == rows["selected"].sum()
    assert record["train_steps"] == 2 and changed(trainer, before)
    history = json.loads((tmp_path / "output" / "self_training_history.json").read_text())
    assert history[1]["class_thresholds"] == record["class_thresholds"]


def test_topk_run(tmp_path, tokenizer):
    trainer = soft_trainer(
        tmp_path,
        tokenizer,
        soft_pseudo_labels=False,
        self_training_rounds=2,
        selection_strategy="topk",
        pseudo_label_fraction=0.25,
        class_balance=False,
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    history = trainer.self_training_history
    assert [r["num_pseudo_labels"] for r in history] == [0, 6, 12]  # 25% then 50% of the 24-row pool
    for round_ in (1, 2):
        rows = read_round_file(tmp_path, round_)
        assert history[round_]["threshold"] == pytest.approx(float(rows["confidence"][rows["selected"]].min()))
        assert history[round_]["num_train_examples"] == 16 + history[round_]["num_pseudo_labels"]
    assert all(r["train_steps"] == 2 for r in history) and changed(trainer, before)


def test_soft_pseudo_labels_run(tmp_path, tokenizer):
    trainer = soft_trainer(tmp_path, tokenizer, confidence_threshold=0.5, class_balance=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        seen.append(SOFT_TARGETS_COLUMN in inputs and TARGET_WEIGHT_COLUMN in inputs)
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = spy
    trainer.train()
    record = trainer.self_training_history[1]
    assert record["num_pseudo_labels"] == 24 and record["train_steps"] == 2 and changed(trainer, before)
    assert seen == [False, False, True, True]  # round 0 trains on hard labels, round 1 on the soft targets
    # The round's labeling pass kept every class; the training rows carry the teacher's distribution and confidence.
    rows = read_round_file(tmp_path, 1)
    assert rows["top_k_probabilities"].shape == (24, 2)
    train_set = trainer.train_dataset.with_format("numpy")
    targets, weights = train_set[SOFT_TARGETS_COLUMN], train_set[TARGET_WEIGHT_COLUMN]
    np.testing.assert_array_equal(targets[:16], np.eye(2)[train_set["labels"][:16]])
    np.testing.assert_array_equal(weights[:16], 1.0)
    selected = np.flatnonzero(rows["selected"])
    order = selected[np.argsort(-rows["confidence"][selected], kind="stable")]
    np.testing.assert_allclose(weights[16:], rows["confidence"][order])
    np.testing.assert_allclose(targets[16:].max(axis=1), rows["confidence"][order])
    np.testing.assert_allclose(targets[16:].sum(axis=1), 1.0, atol=1e-6)
    assert np.all(targets[16:].argmax(axis=1) == train_set["labels"][16:])


def test_soft_round_resumes_from_its_saved_pseudo_labels(tmp_path, tokenizer):
    trainer = soft_trainer(
        tmp_path, tokenizer, save_strategy="steps", save_steps=100, confidence_threshold=0.5, class_balance=False
    )
    trainer.train()
    # What a run resumed in round 1's fitting phase reads back, and the training rows it rebuilds from it.
    predictions, _, _ = load_selection(str(tmp_path / "output" / "round-1" / "self_training_pseudo_labels.npz"), 24)
    assert predictions.probabilities(2).shape == (24, 2)
    record = {"round": 1}
    run = trainer.run_state
    run.enter_round(1)
    run.phase, run.pseudo_labels_file = "fitting", os.path.join("round-1", "self_training_pseudo_labels.npz")
    resumed = RoundLoop(trainer, run).student_set(1, record).with_format("numpy")
    original = trainer.train_dataset.with_format("numpy")
    for column in ("labels", SOFT_TARGETS_COLUMN, TARGET_WEIGHT_COLUMN):
        np.testing.assert_array_equal(resumed[column], original[column])
    assert {k: v for k, v in record.items() if k != "round"}.items() <= trainer.self_training_history[1].items()


def test_soft_pseudo_labels_from_a_streamed_pool(tmp_path, tokenizer):
    pool = toy_dataset(24, seed=5)
    trainer = SemiSupervisedTrainer(
        make_model(seed=2),
        tiny_config(
            tmp_path / "output",
            self_training_rounds=1,
            soft_pseudo_labels=True,
            max_steps=2,
            confidence_threshold=0.5,
            class_balance=False,
            max_pseudo_labels=10,
        ),
        train_dataset=toy_dataset(16, seed=1),
        processing_class=tokenizer,
        unlabeled_dataset=pool.remove_columns("label").to_iterable_dataset(num_shards=2),
    )
    trainer.train()
    rows = read_round_file(tmp_path, 1)
    selected = np.flatnonzero(rows["selected"])
    assert len(selected) == 10
    # A stream's selected rows come back in pool order: each keeps its own row's target and weight.
    train_set = trainer.train_dataset.with_format("numpy")
    input_ids = [tuple(tokenizer(pool[int(i)]["text"])["input_ids"]) for i in selected]
    expected = dict(zip(input_ids, rows["confidence"][selected]))
    got = {tuple(row["input_ids"]): row[TARGET_WEIGHT_COLUMN] for row in trainer.train_dataset.select(range(16, 26))}
    assert got == pytest.approx(expected)
    probabilities = train_set[SOFT_TARGETS_COLUMN][16:]
    np.testing.assert_allclose(probabilities.max(axis=1), train_set[TARGET_WEIGHT_COLUMN][16:])


# ---- Entropy ----------------------------------------------------------------------------------------------------------
def entropy_context(num_labels, **settings):
    config = SemiSupervisedConfig(output_dir="unused", report_to="none", selection_strategy="entropy", **settings)
    return lambda prior=None: SelectionContext(num_labels, 1, prior, config)


def passes(probabilities):
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return PseudoLabels.from_probabilities(
        probabilities.argmax(1).astype(np.int64), probabilities.max(1), probabilities
    )


def test_entropy_rule_weighs_the_whole_distribution():
    # Rows 0 and 1 have the same top probability: row 0 hesitates between two classes, row 1 spreads its doubt over two
    # others, and is the less certain of the two (normalized entropies 0.61 and 0.86).
    rows = [[0.6, 0.4, 0.0], [0.6, 0.2, 0.2], [0.98, 0.01, 0.01], [0.05, 0.9, 0.05], [0.1, 0.1, 0.8]]
    entropy = normalized_entropy(rows)
    assert entropy[0] < 0.7 < entropy[1]
    selection = apply_rule("entropy", passes(rows), entropy_context(3, entropy_threshold=0.7)())
    np.testing.assert_array_equal(selection.selected, [2, 3, 4, 0])  # most certain first; row 1 left out
    assert selection.threshold == pytest.approx(0.6)  # the lowest confidence kept
    assert selection.class_thresholds is None
    # A confidence threshold cannot tell rows 0 and 1 apart: it keeps both or neither.
    kept = select_pseudo_labels(passes(rows).labels, passes(rows).confidences, 0.6)
    assert {0, 1} <= set(kept.tolist())


def test_entropy_rule_with_two_classes_is_a_confidence_threshold():
    confidences = np.random.default_rng(0).uniform(0.5, 1.0, 200)
    labels = np.arange(200) % 2
    probabilities = np.where(labels[:, None] == [0, 1], confidences[:, None], 1 - confidences[:, None])
    # The normalized entropy of a 0.9 / 0.1 prediction.
    at_09 = float(normalized_entropy([[0.9, 0.1]])[0])
    selected = apply_rule("entropy", passes(probabilities), entropy_context(2, entropy_threshold=at_09)()).selected
    np.testing.assert_array_equal(np.sort(selected), np.flatnonzero(passes(probabilities).confidences >= 0.9))


def test_entropy_rule_balances_classes_and_caps_like_the_others():
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet([0.2, 0.2, 0.2], size=300)
    context = entropy_context(3, entropy_threshold=0.6, max_pseudo_labels=30)
    predictions = passes(probabilities)
    uncapped = apply_rule(
        "entropy", predictions, entropy_context(3, entropy_threshold=0.6)(np.array([0.5, 0.25, 0.25]))
    )
    counts = np.bincount(predictions.labels[uncapped.selected], minlength=3)
    assert counts[0] == 2 * counts[1] == 2 * counts[2] > 0  # the labeled shares, 2 : 1 : 1
    capped = apply_rule("entropy", predictions, context(np.array([0.5, 0.25, 0.25])))
    assert len(capped.selected) <= 30 and np.bincount(predictions.labels[capped.selected], minlength=3)[0] == 15
    # Within a class, the most certain (lowest entropy) rows are the ones kept.
    entropy = normalized_entropy(predictions.probabilities(3))
    for c in range(3):
        kept = capped.selected[predictions.labels[capped.selected] == c]
        left = np.setdiff1d(np.flatnonzero((predictions.labels == c) & (entropy <= 0.6)), kept)
        assert not len(left) or entropy[kept].max() <= entropy[left].min()


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan"), "0.5"])
def test_entropy_threshold_bounds(tmp_path, value):
    with pytest.raises(ValueError, match=r"`entropy_threshold` must be in the half-open interval \(0, 1\], got "):
        SemiSupervisedConfig(output_dir=str(tmp_path), report_to="none", entropy_threshold=value)
    assert (
        SemiSupervisedConfig(output_dir=str(tmp_path), report_to="none", entropy_threshold=1.0).entropy_threshold == 1
    )


def test_entropy_run_keeps_the_distribution_and_resumes_from_its_saved_selection(tmp_path, tokenizer):
    def run(threshold):
        config = dict(selection_strategy="entropy", entropy_threshold=threshold, soft_pseudo_labels=False)
        trainer = soft_trainer(
            tmp_path, tokenizer, class_balance=False, save_strategy="steps", save_steps=100, **config
        )
        trainer.train()
        rows = read_round_file(tmp_path, 1)
        # The pass kept every class's probability for the rule, though `pseudo_label_top_k` is 0.
        probabilities = np.zeros((24, 2))
        np.put_along_axis(probabilities, rows["top_k_labels"], rows["top_k_probabilities"], axis=1)
        return trainer, rows, normalized_entropy(probabilities)

    _, _, entropy = run(1.0)  # keeps every row; the same round 0 then teaches round 1 with the median as threshold
    median = float(np.median(entropy))
    trainer, rows, entropy = run(median)
    record = trainer.self_training_history[1]
    selected = np.flatnonzero(rows["selected"])
    assert 0 < len(selected) < 24 and set(selected) == set(np.flatnonzero(entropy <= median))
    assert record["num_pseudo_labels"] == len(selected)
    assert record["threshold"] == pytest.approx(float(rows["confidence"][selected].min()))
    # A resumed round reads the saved selection back: the same training rows, the same record, no rule run.
    record_again = {"round": 1}
    run = trainer.run_state
    run.enter_round(1)
    run.phase, run.pseudo_labels_file = "fitting", os.path.join("round-1", "self_training_pseudo_labels.npz")
    with mock.patch.dict(SELECTION_RULES, {"entropy": SelectionRule(None, needs_distribution=True)}):
        resumed = RoundLoop(trainer, run).student_set(1, record_again)
    assert resumed["labels"] == trainer.train_dataset["labels"]
    assert {k: v for k, v in record_again.items() if k != "round"}.items() <= record.items()


def test_entropy_needs_two_classes(tmp_path, tokenizer):
    with pytest.raises(ValueError, match=r"`selection_strategy`='entropy' needs a classifier with >= 2 labels"):
        SemiSupervisedTrainer(
            make_model(num_labels=1),
            tiny_config(tmp_path, self_training_rounds=1, selection_strategy="entropy"),
            train_dataset=toy_dataset(8, names=None).map(lambda r: {"label": 0}),
            processing_class=tokenizer,
            unlabeled_dataset=toy_dataset(8, seed=1),
        )


def test_entropy_rule_ranks_by_entropy_and_keeps_its_threshold():
    # Row 1 is the more confident (0.62) but spreads its doubt: with room for one row, the rule keeps row 0.
    rows = [[0.6, 0.4, 0.0], [0.62, 0.19, 0.19]]
    assert normalized_entropy(rows)[0] < normalized_entropy(rows)[1]
    one = entropy_context(3, entropy_threshold=1.0, max_pseudo_labels=1)()
    assert apply_rule("entropy", passes(rows), one).selected.tolist() == [0]
    # At the threshold itself a row is kept ("at most").
    at = float(normalized_entropy([rows[0]])[0])
    assert apply_rule("entropy", passes(rows), entropy_context(3, entropy_threshold=at)()).selected.tolist() == [0]


def test_entropy_with_the_prototype_teacher(tmp_path, tokenizer):
    # The prototypes' refinement pass is selected on too: it must keep every class's probability for the rule.
    config = dict(first_teacher="embeddings", selection_strategy="entropy", entropy_threshold=1.0)
    trainer = soft_trainer(tmp_path, tokenizer, soft_pseudo_labels=False, **config)
    trainer.train()
    assert trainer.self_training_history[1]["num_pseudo_labels"] > 0
