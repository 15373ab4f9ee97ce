import numpy as np

from hf_semisup.pseudo_labeling import select_pseudo_labels


def random_teacher(n=1000, num_labels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_labels, n), rng.uniform(1 / num_labels, 1.0, n).astype(np.float32)


def test_threshold_only_keeps_exactly_the_confident_rows():
    labels, confidences = random_teacher()
    for threshold in (0.4, 0.7, 0.95):
        kept = select_pseudo_labels(labels, confidences, threshold)
        assert set(kept.tolist()) == set(np.flatnonzero(confidences >= threshold).tolist())
        assert np.all(np.diff(confidences[kept]) <= 0), "most confident first"


def test_cap_keeps_the_most_confident():
    labels, confidences = random_teacher()
    kept = select_pseudo_labels(labels, confidences, 0.5, max_pseudo_labels=50)
    assert len(kept) == 50
    eligible = np.sort(confidences[confidences >= 0.5])[::-1]
    np.testing.assert_array_equal(np.sort(confidences[kept])[::-1], eligible[:50])


def test_class_balance_follows_the_labeled_prior():
    rng = np.random.default_rng(1)
    # The teacher floods class 0: 80% of its confident predictions.
    labels = rng.choice(3, size=5000, p=[0.8, 0.1, 0.1])
    confidences = rng.uniform(0.5, 1.0, 5000)
    prior = np.array([0.5, 0.25, 0.25])
    kept = select_pseudo_labels(labels, confidences, 0.6, class_prior=prior)
    counts = np.bincount(labels[kept], minlength=3)
    assert counts.sum() > 0
    np.testing.assert_allclose(counts / counts.sum(), prior, atol=0.01)
    # The scarcest class is used up entirely: nothing confident of it is left out.
    scarce = (labels == 1) & (confidences >= 0.6)
    assert counts[1] == scarce.sum() or counts[2] == ((labels == 2) & (confidences >= 0.6)).sum()
    # Within a class, the kept rows are its most confident ones.
    for c in range(3):
        kept_c = confidences[kept][labels[kept] == c]
        rest = confidences[(labels == c) & (confidences >= 0.6)]
        assert kept_c.min() >= np.sort(rest)[::-1][len(kept_c) - 1]


def test_class_balance_with_cap():
    labels, confidences = random_teacher(num_labels=2)
    kept = select_pseudo_labels(labels, confidences, 0.5, class_prior=np.array([0.5, 0.5]), max_pseudo_labels=40)
    assert np.bincount(labels[kept], minlength=2).tolist() == [20, 20]


def test_class_balance_keeps_nothing_when_a_class_has_no_candidate():
    labels = np.zeros(100, dtype=np.int64)
    confidences = np.full(100, 0.99)
    assert len(select_pseudo_labels(labels, confidences, 0.9, class_prior=np.array([0.5, 0.5]))) == 0


def test_nothing_passes_the_threshold():
    labels, confidences = random_teacher()
    assert len(select_pseudo_labels(labels, confidences, 0.999999)) == 0
