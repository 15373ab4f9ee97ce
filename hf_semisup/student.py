"""
A round's student side: what the selection kept, as the round's record says it, and the student's train set (labeled
+ selected rows, with soft targets when asked).
"""

import logging
import os
from collections import Counter

import datasets
import numpy as np

from .data import LENGTH_COLUMN, MODEL_INPUT_COLUMNS
from .metrics import accuracy
from .soft_labels import one_hot_targets, with_soft_targets


logger = logging.getLogger(__name__)


def empty_round_record(class_names: list[str]) -> dict:
    """What round 0, which trains on the labeled set alone, records in place of a selection."""
    return {
        "num_pseudo_labels": 0,
        "pseudo_label_class_counts": {name: 0 for name in class_names},
        "collapse_alarm": False,
    }


def selection_record(
    record: dict, predictions, selection, *, class_names: list[str], confidence_threshold: float, gold=None
) -> list[int]:
    """
    Fill in `record` with what the round's selection kept: `num_pseudo_labels`, `threshold`, `class_thresholds`,
    `pseudo_label_class_counts`, `num_confident`, `mean_confidence` and, given the pool's `gold` labels (`-1` for rows
    without one), `pseudo_label_accuracy` and `teacher_pool_accuracy`. Returns the kept rows' count per class.
    """
    labels, confidences, selected = predictions.labels, predictions.confidences, selection.selected
    counts = Counter(labels[selected].tolist())
    record["num_pseudo_labels"] = len(selected)
    record["threshold"] = selection.threshold
    if selection.class_thresholds is not None:
        record["class_thresholds"] = {name: float(t) for name, t in zip(class_names, selection.class_thresholds)}
    record["pseudo_label_class_counts"] = {name: counts.get(c, 0) for c, name in enumerate(class_names)}
    record["num_confident"] = int((confidences >= confidence_threshold).sum())
    record["mean_confidence"] = float(confidences.mean())
    if gold is not None:  # over the rows that have a label
        known = gold >= 0
        kept = selected[known[selected]]
        record["pseudo_label_accuracy"] = accuracy(labels[kept], gold[kept]) if len(kept) else None
        record["teacher_pool_accuracy"] = accuracy(labels[known], gold[known]) if known.any() else None
    return [counts.get(c, 0) for c in range(len(class_names))]


def student_train_set(
    labeled: datasets.Dataset,
    pool,
    predictions,
    selection,
    *,
    round_: int,
    soft: bool,
    num_labels: int,
    stream_cache: str,
    write: bool,
    main_process_first,
) -> datasets.Dataset:
    """
    Labeled + selected rows, each selected row with its pseudo-label (and, with `soft`, the teacher's distribution as
    its target and its confidence as its weight; the labeled rows then get one-hot targets of weight 1). A streamed
    pool's selected rows are read again and written to `stream_cache` by the process where `write` is set, which
    `main_process_first` (the config's context manager) lets go first.
    """
    selected = selection.selected
    if len(selected) == 0:
        logger.warning(f"Round {round_}: no pseudo-label passed the selection; training on labeled data.")
        return labeled
    with main_process_first(desc="pseudo-labeled train set"):
        pseudo = pseudo_labeled_rows(pool, predictions.labels, selected, stream_cache=stream_cache, write=write)
        if pseudo.features != labeled.features:
            pseudo = pseudo.cast(labeled.features)
    if not soft:
        return datasets.concatenate_datasets([labeled, pseudo])
    # `pseudo` holds the selected rows in selection order, or in pool order when read back from a stream.
    order = np.sort(selected) if isinstance(pool, datasets.IterableDataset) else selected
    probabilities = predictions.probabilities(num_labels)
    pseudo = with_soft_targets(pseudo, probabilities[order], predictions.confidences[order])
    return datasets.concatenate_datasets([one_hot_targets(labeled, num_labels), pseudo])


def take_from_stream(
    stream: datasets.IterableDataset, labels: np.ndarray, path: str, features=None
) -> datasets.Dataset:
    """
    The rows of a tokenized stream whose entry in `labels` is >= 0, with that label in a `labels` column, in stream
    order. They are written to an Arrow file at `path` (through a temporary file and a rename) as the stream is read,
    and memory-mapped from it, so no more than a chunk is ever held in memory.
    """
    from datasets.arrow_writer import ArrowWriter

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    offset = 0
    try:
        with ArrowWriter(features=features, path=tmp) as writer:
            for chunk in stream.iter(batch_size=1000):
                size = len(chunk["input_ids"])
                rows = np.flatnonzero(labels[offset : offset + size] >= 0)
                if len(rows):
                    batch = {k: [v[i] for i in rows] for k, v in chunk.items() if k in MODEL_INPUT_COLUMNS}
                    batch["labels"] = labels[offset + rows].tolist()
                    writer.write_batch(batch)
                offset += size
            writer.finalize()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return datasets.Dataset.from_file(path)


def pseudo_labeled_rows(pool, labels: np.ndarray, selected: np.ndarray, stream_cache: str, write: bool = True):
    """
    The `selected` rows of a tokenized pool with their pseudo-label from `labels` in a `labels` column, memory-mapped
    when the pool is: a `Dataset` pool's rows are flattened by `datasets` into a cache file beside the pool's; an
    `IterableDataset` pool is read again and its rows written, when `write`, to `stream_cache` (the other processes
    only map that file, so call it on the writer first).
    """
    if isinstance(pool, datasets.IterableDataset):
        wanted = np.full(len(labels), -1, dtype=np.int64)
        wanted[selected] = labels[selected]
        if write:
            take_from_stream(pool, wanted, stream_cache)
        return datasets.Dataset.from_file(stream_cache)
    rows = pool.select(selected)
    if LENGTH_COLUMN in rows.column_names:
        rows = rows.remove_columns(LENGTH_COLUMN)
    return rows.add_column("labels", labels[selected])
