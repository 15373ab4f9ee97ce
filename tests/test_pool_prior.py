"""Class balance with the pool's class shares: EM re-estimation of the prior, and the round loop that uses it."""

import json

import numpy as np
import pytest
from datasets import Dataset
from test_round_loop import Host, StubTeacher, config

from hf_semisup.callbacks import round_logs
from hf_semisup.pseudo_labeling import PseudoLabels
from hf_semisup.rounds import RoundLoop
from hf_semisup.selection import estimate_class_prior, select_top_k
from hf_semisup.state import RunState


def calibrated_posteriors(pool_shares, train_prior, n=40000, seed=0):
    """Posteriors of a calibrated 2-class scorer trained under `train_prior`, on a pool drawn with `pool_shares`."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pool_shares[1]).astype(int)
    x = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    odds = np.exp(2 * x) * train_prior[1] / train_prior[0]  # likelihood ratio times the training prior's odds
    p1 = odds / (1 + odds)
    return np.stack([1 - p1, p1], axis=1)


@pytest.mark.parametrize(
    "pool_shares, train_prior", [((0.75, 0.25), (0.5, 0.5)), ((0.5, 0.5), (0.8, 0.2)), ((0.5, 0.5), (0.5, 0.5))]
)
def test_em_recovers_the_pools_shares_where_the_mean_posterior_does_not(pool_shares, train_prior):
    probabilities = calibrated_posteriors(pool_shares, train_prior)
    estimate = estimate_class_prior(probabilities, train_prior)
    assert estimate == pytest.approx(pool_shares, abs=0.015)
    assert estimate.sum() == pytest.approx(1.0)
    if pool_shares != train_prior:  # the plain mean of the posteriors is pulled toward the training prior
        assert abs(probabilities.mean(axis=0)[0] - pool_shares[0]) > 0.05
    # A pure function of its inputs.
    assert np.array_equal(estimate, estimate_class_prior(probabilities, train_prior))


def test_a_class_the_labeled_set_lacks_stays_out_and_an_empty_pass_keeps_the_labeled_shares():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    estimate = estimate_class_prior(probabilities, [2, 0, 2])
    assert estimate[1] == 0.0 and estimate.sum() == pytest.approx(1.0)
    assert estimate_class_prior(np.zeros((0, 3)), [1, 1, 2]) == pytest.approx([0.25, 0.25, 0.5])


def test_a_class_estimated_at_under_half_a_pool_row_is_out_and_does_not_empty_the_round():
    # Seen on Reuters (7 topics, earn 74%): EM left three classes the teacher never predicted at 1e-84 .. 1e-43 of
    # the pool, and the quotas, asking every class with a share for rows, kept nothing in round 2.
    rng = np.random.default_rng(0)
    rows = 400
    labels = (np.arange(rows) % 4 == 3).astype(np.int64)  # classes 0 and 1 only; class 2 is never the top class
    probabilities = np.full((rows, 3), 1e-4)
    probabilities[np.arange(rows), labels] = 1.0
    probabilities[:, 2] = rng.uniform(0.0, 1e-3, rows)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    estimate = estimate_class_prior(probabilities, [1, 1, 1])
    assert estimate[2] == 0.0 and estimate.sum() == pytest.approx(1.0)
    assert estimate[:2] == pytest.approx([0.75, 0.25], abs=0.01)
    kept = select_top_k(labels, probabilities.max(axis=1), fraction=0.5, round_=1, class_prior=estimate)
    assert len(kept) == 200 and np.bincount(labels[kept], minlength=3).tolist() == [150, 50, 0]


POOL = 40


class SkewedTeacher(StubTeacher):
    """A pool where three rows in four are class 0, each row's full distribution; confidences fall along the pool."""

    def label(self, context):
        StubTeacher.taught.append((context.round, context.model))
        labels = (np.arange(POOL) % 4 == 3).astype(np.int64)
        confidences = np.linspace(0.99, 0.7, POOL).astype(np.float32)
        probabilities = np.where(labels[:, None] == np.arange(2), confidences[:, None], 1 - confidences[:, None])
        return PseudoLabels.from_probabilities(labels, confidences, probabilities.astype(np.float32))


def skewed_host(args, **kwargs):
    host = Host(args, **kwargs)
    host.unlabeled_source = Dataset.from_dict({"text": [f"row {i}" for i in range(POOL)]})
    host.unlabeled_dataset = Dataset.from_dict({"input_ids": [[3, i] for i in range(POOL)], "length": [2] * POOL})
    host.unlabeled_gold_labels = (np.arange(POOL) % 4 == 3).astype(np.int64)
    return host


@pytest.fixture
def skewed(monkeypatch):
    from hf_semisup.teachers import TEACHERS

    monkeypatch.setitem(TEACHERS, "stub", SkewedTeacher)
    monkeypatch.setitem(TEACHERS, "model", SkewedTeacher)


def run_rounds(tmp_path, prior, **kwargs):
    args = config(
        tmp_path, selection_strategy="threshold", confidence_threshold=0.5, class_balance_prior=prior, **kwargs
    )
    host = skewed_host(args)
    RoundLoop(host, RunState()).train()
    return json.loads((tmp_path / "self_training_history.json").read_text())


def test_the_quotas_follow_the_pools_estimated_shares(tmp_path, skewed, caplog):
    labeled = run_rounds(tmp_path / "labeled", "labeled")
    # The labeled set is 50/50: its quotas keep as many of the rare class as of the common one.
    assert labeled[1]["pseudo_label_class_counts"] == {"negative": 10, "positive": 10}
    assert "pool_class_prior" not in labeled[1]

    pool = run_rounds(tmp_path / "pool", "pool")
    for record in pool[1:]:
        estimate = record["pool_class_prior"]
        assert list(estimate) == ["negative", "positive"] and estimate["negative"] > 0.7
        counts = record["pseudo_label_class_counts"]
        assert counts["negative"] > 2 * counts["positive"] > 0
        assert counts["negative"] / sum(counts.values()) == pytest.approx(estimate["negative"], abs=0.05)
        logs = round_logs(record)  # what TensorBoard and W&B get
        assert logs["pool_class_prior_negative"] == estimate["negative"]
        # This teacher is overconfident, so EM overshoots the pool's 0.75 (its posteriors are taken at their word):
        # above 0.8, more than the 0.3 margin over the labeled 0.5, the alarm says where the skew comes from.
        assert record["collapse_alarm"] is (estimate["negative"] > 0.8)
    assert "class_balance_prior='pool'" in caplog.text


def test_a_resumed_round_keeps_the_estimate_it_selected_with(tmp_path, skewed):
    args = config(
        tmp_path / "uninterrupted", selection_strategy="threshold", confidence_threshold=0.5,
        class_balance_prior="pool", save_strategy="steps",
    )  # fmt: skip
    RoundLoop(skewed_host(args), RunState()).train()
    expected = json.loads((tmp_path / "uninterrupted" / "self_training_history.json").read_text())

    args = config(
        tmp_path / "resumed", selection_strategy="threshold", confidence_threshold=0.5,
        class_balance_prior="pool", save_strategy="steps",
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):  # in round 2's fit, after its labeling pass was saved
        RoundLoop(skewed_host(args, crash_in_round=2), RunState()).train()
    StubTeacher.taught = []
    RoundLoop(skewed_host(args), RunState()).train(resume_from_checkpoint=True)
    assert StubTeacher.taught == []  # round 2's pass and selection were read back, not made again
    resumed = json.loads((tmp_path / "resumed" / "self_training_history.json").read_text())
    assert resumed == expected and "pool_class_prior" in resumed[2]


def test_the_field_is_checked():
    from hf_semisup import SemiSupervisedConfig

    with pytest.raises(ValueError, match="class_balance_prior"):
        SemiSupervisedConfig(output_dir="unused", class_balance_prior="test set")


@pytest.mark.parametrize("first_teacher", ["model", "embeddings"])
def test_a_trainer_estimates_the_pools_shares_with_either_teacher(tmp_path, tokenizer, first_teacher):
    # Three classes: the pass must keep every class's probability for the estimate (two would follow from the top one).
    from conftest import make_model, tiny_config

    from hf_semisup import SemiSupervisedTrainer

    names = ("negative", "neutral", "positive")
    words = ("bad awful", "film plot", "good great")

    def rows(n, seed):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 3, n)
        return Dataset.from_dict(
            {
                "text": [f"a {words[y]} movie {seed} {i}" for i, y in enumerate(labels)],
                "label": [names[y] for y in labels],
            }
        )

    config = tiny_config(
        tmp_path, self_training_rounds=1, max_steps=2, first_teacher=first_teacher, class_balance_prior="pool",
        selection_strategy="threshold", confidence_threshold=0.34,
    )  # fmt: skip
    trainer = SemiSupervisedTrainer(
        make_model(num_labels=3, seed=2), config, train_dataset=rows(18, 1),
        processing_class=tokenizer, unlabeled_dataset=rows(30, 5),
    )  # fmt: skip
    trainer.train()
    estimate = trainer.self_training_history[1]["pool_class_prior"]
    assert list(estimate) == list(names) and sum(estimate.values()) == pytest.approx(1.0)
    assert "pool_class_prior" not in trainer.self_training_history[0]
