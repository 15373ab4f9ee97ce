"""
The classifier a run trains, from a name or path: a sequence classifier whose new head has one output per class of the
labeled set, named after the classes. Shared by [`SemiSupervisedTrainer`] (a string `model`) and `hf-semisup train`.
"""

import logging
import os

import numpy as np
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from .data import has_default_label_names, is_missing_label, label_names_of


logger = logging.getLogger(__name__)

# The `from_pretrained` arguments that say where the files are: they load the tokenizer and config as well as the model.
FILE_LOCATION_KWARGS = ("revision", "subfolder", "trust_remote_code", "cache_dir", "token", "local_files_only")


def file_location_kwargs(model_init_kwargs: dict | None) -> dict:
    return {k: v for k, v in (model_init_kwargs or {}).items() if k in FILE_LOCATION_KWARGS}


def head_label_kwargs(config, labeled, label_column: str) -> dict:
    """
    The `from_pretrained` label arguments for a checkpoint whose config has only placeholder class names (`LABEL_0`,
    ...): the labeled set's class names, or, for integer labels, `num_labels` = the largest label + 1. Empty when the
    checkpoint names its classes, or when the labels are neither (the trainer then reports the bad label).
    """
    if not has_default_label_names(config) or label_column not in labeled.column_names:
        return {}
    names = label_names_of(labeled, label_column)
    values = names if names is not None else [v for v in labeled.unique(label_column) if not is_missing_label(v)]
    if len(values) < 2:
        held = f"one class ({values[0]!r})" if values else "no label"
        raise ValueError(
            f"The labeled set's label column {label_column!r} holds {held}: a classifier needs labeled examples of "
            "at least 2 classes."
        )
    if names is not None:
        _warn_on_lookalike_names(names, label_column)
        return {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
        }
    whole = [v for v in values if isinstance(v, (int, np.integer, float, np.floating)) and not isinstance(v, bool)]
    if len(whole) == len(values) and all(float(v).is_integer() for v in whole):  # a csv with empty cells: 1.0
        return {"num_labels": int(max(values)) + 1}
    return {}


def _warn_on_lookalike_names(names: list, label_column: str):
    # "positive" and "positive " (or "Positive") become two classes: say so, as it is almost always a typo.
    groups = {}
    for name in names:
        groups.setdefault(name.strip().casefold(), []).append(name)
    for group in groups.values():
        if len(group) > 1:
            logger.warning(
                f"The labeled set's label column {label_column!r} has classes that differ only in case or spaces "
                f"({', '.join(repr(name) for name in group)}): each is a class of its own."
            )


def check_local_path(path: str, field: str):
    """
    Raise a `ValueError` naming `field` when `path` can only be a local path (absolute, or starting with `.` or `~`)
    and does not exist: `from_pretrained` would take it for a malformed Hub repo id and say that instead.
    """
    if (os.path.isabs(path) or path.startswith((".", "~"))) and not os.path.exists(os.path.expanduser(path)):
        raise ValueError(f"{field} {path!r} does not exist (a local path).")


def load_classifier(name: str, model_init_kwargs: dict, **kwargs) -> PreTrainedModel:
    """
    `AutoModelForSequenceClassification.from_pretrained(name, **model_init_kwargs, **kwargs)`. A keyword the model
    cannot take (a misspelt one reaches the model's `__init__`; a `dtype` torch does not have) is reported as a
    `ValueError` naming `model_init_kwargs`, and so is a trained head whose size is not `num_labels`.
    """
    try:
        return AutoModelForSequenceClassification.from_pretrained(name, **model_init_kwargs, **kwargs)
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        raise ValueError(
            f"{name!r} has a trained classification head whose size is not the {kwargs.get('num_labels')} classes of "
            "the labeled set: to replace it with a new head, set `model_init_kwargs`={'ignore_mismatched_sizes': "
            "True} (`--model_init_kwargs '{\"ignore_mismatched_sizes\": true}'`)."
        ) from error
    except (TypeError, AttributeError) as error:
        if not model_init_kwargs:
            raise
        raise ValueError(f"`model_init_kwargs`={model_init_kwargs!r} could not load {name!r}: {error}") from error


def align_label_names(config, label_names: list | None):
    """Write the labeled set's class names into a config that has only placeholders, so a saved model keeps them."""
    if label_names is None or not has_default_label_names(config):
        return
    if len(label_names) != config.num_labels:
        raise ValueError(
            f"The labeled set has {len(label_names)} classes {label_names}, but the model has "
            f"`num_labels`={config.num_labels}."
        )
    config.id2label = dict(enumerate(label_names))
    config.label2id = {label: i for i, label in enumerate(label_names)}
