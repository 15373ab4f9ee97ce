"""Default metrics: accuracy and macro-F1, through `evaluate` when it can load them, else computed locally."""

import functools
import logging
import os

import numpy as np


logger = logging.getLogger(__name__)


def accuracy(predictions, references) -> float:
    predictions, references = np.asarray(predictions), np.asarray(references)
    return float((predictions == references).mean()) if len(references) else 0.0


def macro_f1(predictions, references, labels=None) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in `references` or `predictions` (as sklearn)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if labels is None:
        labels = np.union1d(predictions, references)
    scores = []
    for label in labels:
        tp = np.sum((predictions == label) & (references == label))
        fp = np.sum((predictions == label) & (references != label))
        fn = np.sum((predictions != label) & (references == label))
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores)) if scores else 0.0


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE")


def is_offline() -> bool:
    """Whether the environment says offline (`HF_HUB_OFFLINE`, `HF_EVALUATE_OFFLINE` or `TRANSFORMERS_OFFLINE`)."""
    import huggingface_hub.constants

    values = [os.environ.get(name, "") for name in OFFLINE_VARIABLES]
    return huggingface_hub.constants.HF_HUB_OFFLINE or any(v.upper() in ("1", "ON", "YES", "TRUE") for v in values)


@functools.cache
def _load_evaluate_metrics():
    """
    The `evaluate` modules for accuracy and F1, or `None` when they cannot be loaded. Offline, `evaluate.load` is not
    tried at all: it asks the Hub before its cache, and waits on the retries (about 2 s a run) before it gives up.
    """
    if is_offline():
        logger.info("Offline: the local accuracy and F1 are used, not `evaluate.load`.")
        return None
    try:
        import evaluate

        return evaluate.load("accuracy"), evaluate.load("f1")
    except Exception as error:  # evaluate raises FileNotFoundError/ConnectionError/ImportError, depending on version
        logger.info(f"`evaluate.load` is unavailable ({type(error).__name__}); using the local accuracy and F1.")
        return None


# What an evaluation with the default `compute_metrics` reports (as `eval_<name>`), the loss included.
DEFAULT_METRIC_NAMES = ("loss", "accuracy", "f1")


def compute_classification_metrics(eval_prediction) -> dict[str, float]:
    """`compute_metrics` for [`~transformers.Trainer`]: `accuracy` and `f1` (macro) of the argmax predictions."""
    logits, references = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    predictions = np.argmax(logits, axis=-1)
    loaded = _load_evaluate_metrics()
    if loaded is not None:
        accuracy_metric, f1_metric = loaded
        return {
            **accuracy_metric.compute(predictions=predictions, references=references),
            **f1_metric.compute(predictions=predictions, references=references, average="macro"),
        }
    return {"accuracy": accuracy(predictions, references), "f1": macro_f1(predictions, references)}
