"""Validation, label mapping and tokenization of the labeled, unlabeled and eval datasets (reading files: `loading.py`)."""

import logging
import os

import datasets
import numpy as np
import pyarrow.compute as pc
from datasets.fingerprint import Hasher


MODEL_INPUT_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
LENGTH_COLUMN = "length"

logger = logging.getLogger(__name__)


def is_tokenized(dataset) -> bool:
    return "input_ids" in (dataset.column_names or [])


def has_default_label_names(config) -> bool:
    """True when `config.id2label` holds only the placeholder names `LABEL_0`, `LABEL_1`, ..."""
    return are_placeholder_names(getattr(config, "id2label", None) or {})


def are_placeholder_names(id2label: dict) -> bool:
    """True when the class names of `id2label` are `PretrainedConfig`'s placeholders `LABEL_0`, `LABEL_1`, ..."""
    return all(str(name) == f"LABEL_{i}" for i, name in id2label.items())


# How a row without a label is marked: `None` (a NaN in a csv's numeric column), or -1 as on GLUE's test split and
# IMDb's unsupervised split.
MISSING_LABELS = (None, -1)


def is_missing_label(value) -> bool:
    return value in MISSING_LABELS or (isinstance(value, float) and np.isnan(value))


def label_names_of(dataset, label_column: str) -> list | None:
    """
    The class names of a labeled dataset: `ClassLabel` names, or its sorted distinct strings (rows without a label
    aside); `None` for ints. A column that mixes class names and integers is a `ValueError`.
    """
    feature = dataset.features.get(label_column) if dataset.features else None
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    try:
        values = dataset.unique(label_column)
    except (TypeError, ValueError, NotImplementedError):  # e.g. a json column of mixed types, which Arrow cannot sort
        values = list(dict.fromkeys(dataset[label_column]))
    values = [v for v in values if not is_missing_label(v)]
    names = [v for v in values if isinstance(v, str)]
    if names and len(names) < len(values):
        other = next(v for v in values if not isinstance(v, str))
        raise ValueError(
            f"The label column {label_column!r} mixes class names and other values (e.g. {names[0]!r} and "
            f"{other!r}): use class names throughout, or integer class ids throughout."
        )
    return sorted(names) if names else None


def check_dataset_types(**named):
    """Raise a `TypeError` naming the argument when a dataset is not a `datasets.Dataset` (a dict: of them)."""
    streams = {"unlabeled_dataset"}  # the pool may be streamed
    for field, value in named.items():
        values = value.values() if field == "eval_dataset" and isinstance(value, dict) else [value]
        allowed = (datasets.Dataset, datasets.IterableDataset) if field in streams else datasets.Dataset
        for item in values:
            if item is not None and not isinstance(item, allowed):
                raise TypeError(
                    f"`{field}` must be a `datasets.Dataset`, got {type(item).__name__}: build one with "
                    "`Dataset.from_dict({...})`, `Dataset.from_list([...])` or `Dataset.from_pandas(df)`."
                )


def check_column(dataset, column: str, name: str, field: str):
    if column not in dataset.column_names:
        raise ValueError(
            f"The {name} has no column {column!r} (set by `{field}`); its columns are {dataset.column_names}."
        )


def _is_string_column(dataset, column: str) -> bool:
    feature = dataset.features.get(column) if dataset.features else None
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def check_texts(dataset, text_column: str, name: str):
    """Raise a `ValueError` naming the column, the row and the value if a text is not a string, or is empty or blank."""
    if _is_string_column(dataset, text_column):
        # Arrow finds the first null or blank text without turning the column into Python strings.
        column = dataset.with_format("arrow")[text_column]
        blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(column), ""), True)
        row = pc.index(blank, True).as_py()
        if row < 0:
            return
        rows = [(row, dataset[row][text_column])]
    else:
        rows = enumerate(dataset[text_column])
    for i, value in rows:
        if not isinstance(value, str):
            raise ValueError(
                f"The {name}'s text column {text_column!r} must hold strings, but row {i} is {value!r} "
                f"({type(value).__name__})."
            )
        if not value.strip():
            raise ValueError(
                f"The {name}'s text column {text_column!r} has an empty text at row {i} ({value!r}): drop or fill it."
            )


def check_label_values(dataset, label_column: str, name: str):
    """Raise a `ValueError` naming the row and the value of the first label that is a number but not a whole one."""
    feature = dataset.features.get(label_column) if dataset.features else None
    if not (isinstance(feature, datasets.Value) and feature.dtype.startswith("float")):
        return
    values = np.asarray(dataset.with_format("numpy")[label_column], dtype=np.float64)
    fractional = np.flatnonzero(~np.isnan(values) & (values != np.round(values)))
    if len(fractional):
        row = int(fractional[0])
        raise ValueError(
            f"The {name}'s label column {label_column!r} has a non-integer label {float(values[row])!r} at row {row}: a label "
            "is a class name or an integer class id."
        )


def warn_on_unknown_tokens(dataset, tokenizer, name: str, rows: int = 1000, share: float = 0.5):
    """
    Warn when more than `share` of the tokens of `dataset`'s first `rows` rows (special tokens aside) are the
    tokenizer's unknown token: the tokenizer is not the model's, or does not know the language (e.g. a model folder
    without tokenizer files, for which `AutoTokenizer` builds a near-empty vocabulary).
    """
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is None or "input_ids" not in dataset.column_names:
        return
    special = set(getattr(tokenizer, "all_special_ids", [])) - {unknown}
    ids = [i for row in dataset.select(range(min(rows, len(dataset))))["input_ids"] for i in row if i not in special]
    found = sum(i == unknown for i in ids) / max(len(ids), 1)
    if found > share:
        logger.warning(
            f"{found:.0%} of the tokens of the {name} are the unknown token {tokenizer.unk_token!r}: is the tokenizer "
            f"({type(tokenizer).__name__}, {len(tokenizer)} tokens) the model's, with its vocabulary files?"
        )


def drop_labeled_duplicates(labeled, unlabeled, text_column: str):
    """
    The unlabeled pool without the rows whose text is also in the labeled set (exact match), with a warning.

    Such a row would come back as a pseudo-label of a text the model already learns with its gold label; worse, its
    `pseudo_label_accuracy` would flatter the teacher. Tokenized datasets are compared by `input_ids`.
    """
    if unlabeled is None or len(unlabeled) == 0:
        return unlabeled
    if is_tokenized(labeled) and is_tokenized(unlabeled):
        seen = {tuple(ids) for ids in labeled["input_ids"]}
        shared = np.asarray([tuple(ids) in seen for ids in unlabeled["input_ids"]], dtype=bool)
    elif _is_string_column(labeled, text_column) and _is_string_column(unlabeled, text_column):
        # Validate first, so an error names the row as the caller numbers it, before any row is dropped.
        check_texts(unlabeled, text_column, "unlabeled set (`unlabeled_dataset`)")
        pool = unlabeled.with_format("arrow")[text_column]
        texts = pc.unique(labeled.with_format("arrow")[text_column]).cast(pool.type)
        shared = pc.fill_null(pc.is_in(pool, value_set=texts), False).to_numpy(zero_copy_only=False).astype(bool)
    else:
        return unlabeled
    rows = np.flatnonzero(shared)
    if len(rows) == 0:
        return unlabeled
    shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    left = "; nothing is left: is it the labeled set again?" if len(rows) == len(unlabeled) else "."
    logger.warning(
        f"{len(rows)} row(s) of the unlabeled set (`unlabeled_dataset`) repeat a text of the labeled set (rows "
        f"{shown}); they are dropped from the pool{left}"
    )
    return unlabeled.select(np.flatnonzero(~shared))


def check_every_class_labeled(label_ids, id2label: dict, name: str):
    """Raise a `ValueError` if one of the model's `num_labels` classes has no example in the labeled set."""
    counts = np.bincount(np.asarray(label_ids, dtype=np.int64), minlength=len(id2label))
    missing = [id2label[c] for c in range(len(id2label)) if counts[c] == 0]
    if missing:
        found = [id2label[c] for c in range(len(id2label)) if counts[c] > 0]
        raise ValueError(
            f"The model has `num_labels`={len(id2label)}, but the {name} has no example of class(es) {missing}; it "
            f"has {found}. Give every class a labeled example, or load the model with `num_labels`={len(found)}."
        )


def encode_labels(values, label2id: dict, num_labels: int, name: str, label_column: str, rows=None) -> list[int]:
    """
    Map class names through `label2id` and check that every row has a label, one of the model's classes. A number is a
    class id when it is a whole number (`1.0` too: a csv column with empty cells reads as floats). `rows`: the row
    number of each value in the dataset the user gave (for messages), when `values` are some of its rows.
    """
    values = list(values)
    rows = list(range(len(values))) if rows is None else list(rows)
    missing = [rows[i] for i, value in enumerate(values) if is_missing_label(value)]
    if missing:
        shown = ", ".join(str(i) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        where = f"row {shown}" if len(missing) == 1 else f"{len(missing)} rows ({shown})"
        raise ValueError(
            f"The {name}'s label column {label_column!r} has no label (empty, None or -1) in {where}: give every row "
            "a label, or drop the rows without one."
        )
    ids = []
    for row, value in zip(rows, values):
        if isinstance(value, str):
            if value not in label2id:
                raise ValueError(
                    f"The {name}'s label column {label_column!r} has label {value!r} at row {row}, which is not one of "
                    f"the model's classes {sorted(label2id)}."
                )
            value = label2id[value]
        if isinstance(value, (float, np.floating)) and not isinstance(value, bool):
            if not float(value).is_integer():
                raise ValueError(
                    f"The {name}'s label column {label_column!r} has a non-integer label {value!r} at row {row}: a "
                    "label is a class name or an integer class id."
                )
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < num_labels:
            raise ValueError(
                f"The {name}'s label column {label_column!r} has label {value!r} at row {row}, outside the model's "
                f"{num_labels} classes (0..{num_labels - 1})."
            )
        ids.append(int(value))
    numbered = any(isinstance(value, (int, float, np.number)) and not isinstance(value, bool) for value in values)
    id2label = {i: name for name, i in label2id.items()}
    if numbered and not are_placeholder_names(id2label):
        # Usually right (class ids in the model's order), but silently wrong if the file numbers them otherwise.
        order = ", ".join(f"{i} = {id2label[i]!r}" for i in sorted(id2label))
        logger.warning(
            f"The {name}'s label column {label_column!r} holds class ids (integers) while the model's classes have "
            f"names: read as {order}. If it numbers the classes in another order, give the class names instead."
        )
    return ids


def _require_tokenizer(tokenizer, name: str, text_column: str):
    if tokenizer is None:
        raise ValueError(
            f"The {name} holds raw text (column {text_column!r}) but there is no tokenizer to encode it: pass "
            "`processing_class` (e.g. `AutoTokenizer.from_pretrained(...)`), or datasets with `input_ids`."
        )


def _hidden_label_ids(values, label2id: dict, num_labels: int, name: str, label_column: str) -> list[int] | None:
    """
    A pool's labels as class ids, `-1` for a row without one; `None` when no row has one. They are never trained on:
    labels that do not fit the model only cost the accuracy diagnostic.
    """
    values = list(values)
    labeled = [i for i, value in enumerate(values) if not is_missing_label(value)]
    if not labeled:
        return None
    try:
        ids = encode_labels([values[i] for i in labeled], label2id, num_labels, name, label_column, rows=labeled)
    except ValueError as error:
        logger.warning(f"{error} These labels are only used to score the pseudo-labels: no `pseudo_label_accuracy`.")
        return None
    if len(labeled) < len(values):
        logger.warning(
            f"{len(labeled)} of the {len(values)} rows of the {name} have a label: `pseudo_label_accuracy` and "
            "`teacher_pool_accuracy` are measured on those rows only."
        )
    gold = [-1] * len(values)
    for row, label in zip(labeled, ids):
        gold[row] = label
    return gold


def prepare_dataset(
    dataset,
    tokenizer,
    *,
    name: str,
    text_column: str,
    label_column: str,
    label2id: dict | None,
    num_labels: int,
    max_length: int | None,
    labels: str = "train",
    add_length: bool = False,
    cache_dir: str | None = None,
    num_proc: int | None = None,
):
    """
    Check a raw or tokenized dataset and return it tokenized, with integer labels in a `labels` column.

    Args:
        labels (`str`):
            `"train"`: the label column is required and becomes `labels`; `"hide"`: the label column, if any, is
            dropped from the returned dataset (an unlabeled pool); `"keep"`: like `"train"` but optional.
        add_length (`bool`):
            Add a `length` column (tokens per row) used to sort rows by length when labeling.
        cache_dir (`str`, *optional*):
            Where to write the tokenized rows of a dataset held in memory, so they are memory-mapped from an Arrow
            file instead of held in RAM (a file-backed dataset is cached beside its own files by `datasets`). The
            file name hashes the dataset and the tokenization, so a later call, e.g. from another process, reuses it.
        num_proc (`int`, *optional*):
            Processes that tokenize (`Dataset.map(num_proc=...)`); the rows come out the same.

    Returns:
        `(dataset, gold)`: the prepared dataset and, when `labels="hide"` and the pool carries labels, the hidden
        labels as an int array (for diagnostics only), else `None`.
    """
    if len(dataset) == 0:
        raise ValueError(f"The {name} is empty.")
    tokenized = is_tokenized(dataset)
    if not tokenized:
        check_column(dataset, text_column, name, "text_column")
        check_texts(dataset, text_column, name)
        _require_tokenizer(tokenizer, name, text_column)

    source_label = label_column if label_column in dataset.column_names else None
    if source_label is None and "labels" in dataset.column_names:
        source_label = "labels"
    if labels == "train" and source_label is None:
        check_column(dataset, label_column, name, "label_column")

    label_ids = None
    if source_label is not None:
        values = dataset[source_label]
        feature = dataset.features.get(source_label)
        if isinstance(feature, datasets.ClassLabel) and label2id is not None:
            values = [
                v if is_missing_label(v) or feature.names[v] not in label2id else feature.int2str(v) for v in values
            ]
        if labels == "hide":
            label_ids = _hidden_label_ids(values, label2id or {}, num_labels, name, source_label)
        else:
            label_ids = encode_labels(values, label2id or {}, num_labels, name, source_label)

    gold = None
    if labels == "hide" and label_ids is not None:
        gold = np.asarray(label_ids, dtype=np.int64)

    cache = {}
    if cache_dir is not None and not dataset.cache_files:
        key = Hasher.hash([dataset._fingerprint, tokenizer, text_column, max_length, add_length, tokenized])
        cache = {"cache_file_name": os.path.join(cache_dir, f"tokenized-{key}.arrow"), "new_fingerprint": key}
        os.makedirs(cache_dir, exist_ok=True)

    if tokenized:
        keep = [c for c in dataset.column_names if c in MODEL_INPUT_COLUMNS]
        dataset = dataset.select_columns(keep)
        if add_length and LENGTH_COLUMN not in dataset.column_names:
            dataset = dataset.map(
                lambda b: {LENGTH_COLUMN: [len(x) for x in b["input_ids"]]}, batched=True, num_proc=num_proc, **cache
            )
    else:
        if max_length is None:
            max_length = min(tokenizer.model_max_length, 1_000_000)

        def tokenize(batch):
            encoded = tokenizer(batch[text_column], truncation=True, max_length=max_length)
            if add_length:
                encoded[LENGTH_COLUMN] = [len(ids) for ids in encoded["input_ids"]]
            return encoded

        dataset = dataset.map(
            tokenize,
            batched=True,
            remove_columns=dataset.column_names,
            desc=f"Tokenizing the {name}",
            num_proc=num_proc,
            **cache,
        )

    if labels != "hide" and label_ids is not None:
        dataset = dataset.add_column("labels", label_ids)
    return dataset, gold


def prepare_stream(
    dataset: datasets.IterableDataset, tokenizer, *, name: str, text_column: str, max_length: int | None
):
    """
    An `IterableDataset` pool, tokenized lazily as it is read (nothing is read here). A label column, if any, is
    ignored: a streamed pool gives no `pseudo_label_accuracy` diagnostic.
    """
    column_names = dataset.column_names
    if column_names is not None and "input_ids" in column_names:
        return dataset.select_columns([c for c in column_names if c in MODEL_INPUT_COLUMNS])
    if column_names is not None:
        check_column(dataset, text_column, name, "text_column")
        _require_tokenizer(tokenizer, name, text_column)
    if max_length is None:
        max_length = min(tokenizer.model_max_length, 1_000_000)

    def tokenize(batch):
        if "input_ids" in batch:
            return {}
        if text_column not in batch:
            raise ValueError(f"The {name} has no column {text_column!r} (set by `text_column`); it has {list(batch)}.")
        for value in batch[text_column]:
            if not isinstance(value, str):
                raise ValueError(
                    f"The {name}'s text column {text_column!r} must hold strings, but holds {value!r} "
                    f"({type(value).__name__})."
                )
        return tokenizer(batch[text_column], truncation=True, max_length=max_length)

    return dataset.map(tokenize, batched=True)
