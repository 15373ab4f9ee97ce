import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from transformers import EvalPrediction

from hf_semisup.metrics import accuracy, compute_classification_metrics, macro_f1


def test_local_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    for num_labels in (2, 3, 5):
        references = rng.integers(0, num_labels, 200)
        predictions = np.where(rng.random(200) < 0.6, references, rng.integers(0, num_labels, 200))
        assert accuracy(predictions, references) == accuracy_score(references, predictions)
        assert np.isclose(macro_f1(predictions, references), f1_score(references, predictions, average="macro"))


def test_default_compute_metrics_offline():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 3))
    references = rng.integers(0, 3, 50)
    metrics = compute_classification_metrics(EvalPrediction(predictions=logits, label_ids=references))
    predictions = logits.argmax(-1)
    assert np.isclose(metrics["accuracy"], accuracy_score(references, predictions))
    assert np.isclose(metrics["f1"], f1_score(references, predictions, average="macro"))


def test_offline_the_metrics_never_try_the_hub(monkeypatch):
    # With HF_HUB_OFFLINE alone (no HF_EVALUATE_OFFLINE), `evaluate.load` still asked the Hub and waited on retries.
    import evaluate

    from hf_semisup import metrics

    calls = []
    monkeypatch.setattr(evaluate, "load", lambda *args, **kwargs: calls.append(args))
    monkeypatch.delenv("HF_EVALUATE_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metrics._load_evaluate_metrics.cache_clear()
    try:
        logits, references = np.eye(3)[[0, 1, 2, 1]], np.array([0, 1, 1, 1])
        result = compute_classification_metrics(EvalPrediction(predictions=logits, label_ids=references))
    finally:
        metrics._load_evaluate_metrics.cache_clear()
    assert calls == [] and result["accuracy"] == 0.75
