"""Loading, label sampling, validation, label mapping and tokenization of the labeled, unlabeled and eval datasets."""

import logging
import os

import datasets
import numpy as np
import pyarrow.compute as pc
from datasets.fingerprint import Hasher


logger = logging.getLogger(__name__)


MODEL_INPUT_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
LENGTH_COLUMN = "length"
# File formats `datasets` reads, by extension, with the builder that reads them.
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}

logger = logging.getLogger(__name__)


def is_tokenized(dataset) -> bool:
    return "input_ids" in (dataset.column_names or [])


def has_default_label_names(config) -> bool:
    """True when `config.id2label` holds only the placeholder names `LABEL_0`, `LABEL_1`, ..."""
    id2label = getattr(config, "id2label", None) or {}
    return all(str(name) == f"LABEL_{i}" for i, name in id2label.items())


def label_names_of(dataset, label_column: str) -> list | None:
    """The class names of a labeled dataset: `ClassLabel` names, or its sorted distinct strings; `None` for ints."""
    feature = dataset.features.get(label_column) if dataset.features else None
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = dataset.unique(label_column)
    if values and all(isinstance(v, str) for v in values):
        return sorted(values)
    return None


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
    logger.warning(
        f"{len(rows)} row(s) of the unlabeled set (`unlabeled_dataset`) repeat a text of the labeled set (rows "
        f"{shown}); they are dropped from the pool."
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


def encode_labels(values, label2id: dict, num_labels: int, name: str, label_column: str) -> list[int]:
    """Map class names through `label2id` and check that every label is one of the model's classes."""
    ids = []
    for i, value in enumerate(values):
        if isinstance(value, str):
            if value not in label2id:
                raise ValueError(
                    f"The {name}'s label column {label_column!r} has label {value!r} at row {i}, which is not one of "
                    f"the model's classes {sorted(label2id)}."
                )
            value = label2id[value]
        if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer)) or not 0 <= value < num_labels:
            raise ValueError(
                f"The {name}'s label column {label_column!r} has label {value!r} at row {i}, outside the model's "
                f"{num_labels} classes (0..{num_labels - 1})."
            )
        ids.append(int(value))
    return ids


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
            values = [feature.int2str(v) if feature.names[v] in label2id else v for v in values]
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
            dataset = dataset.map(lambda b: {LENGTH_COLUMN: [len(x) for x in b["input_ids"]]}, batched=True, **cache)
    else:
        if max_length is None:
            max_length = min(tokenizer.model_max_length, 1_000_000)

        def tokenize(batch):
            encoded = tokenizer(batch[text_column], truncation=True, max_length=max_length)
            if add_length:
                encoded[LENGTH_COLUMN] = [len(ids) for ids in encoded["input_ids"]]
            return encoded

        dataset = dataset.map(
            tokenize, batched=True, remove_columns=dataset.column_names, desc=f"Tokenizing the {name}", **cache
        )

    if labels != "hide" and label_ids is not None:
        dataset = dataset.add_column("labels", label_ids)
    return dataset, gold


def sample_labeled_per_class(dataset, num_per_class: int, label_column: str, seed: int = 0):
    """
    Split a labeled dataset into `num_per_class` rows per class (drawn with `seed`) and the rest.

    Returns:
        `(labeled, rest)`: two [`~datasets.Dataset`] views of `dataset`. `rest` keeps its label column, so it can
        serve as an unlabeled pool whose hidden labels only measure pseudo-label accuracy.
    """
    if num_per_class < 1:
        raise ValueError(f"`num_labeled_per_class` must be >= 1, got {num_per_class!r}.")
    values = dataset[label_column]
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted(set(values), key=str):
        rows = np.flatnonzero(np.asarray([v == label for v in values]))
        if len(rows) < num_per_class:
            raise ValueError(
                f"`num_labeled_per_class`={num_per_class} is more than class {label!r} has ({len(rows)} rows)."
            )
        chosen.extend(rng.choice(rows, size=num_per_class, replace=False).tolist())
    chosen = sorted(chosen)
    rest = np.setdiff1d(np.arange(len(dataset)), chosen)
    return dataset.select(chosen), dataset.select(rest)


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


# ---- Loading the splits of `hf-semisup train` ------------------------------------------------------------------------
FILE_FLAGS = {
    "train": "train_file",
    "unlabeled": "unlabeled_file",
    "validation": "validation_file",
    "test": "test_file",
}
UNLABELED_MARKERS = (None, -1)  # how Hub datasets mark a row without a label (e.g. GLUE test, IMDb unsupervised)


def _is_unlabeled(value) -> bool:
    # NaN is how a csv with an empty cell in an int column comes back.
    return value in UNLABELED_MARKERS or (isinstance(value, float) and np.isnan(value))


def read_data_file(path: str, flag: str, cache_dir: str | None = None) -> datasets.Dataset:
    """Read a csv, tsv, json, jsonl or parquet file into a [`~datasets.Dataset`]; `flag` names it in errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"`--{flag}` {path!r} {'is not a file' if os.path.exists(path) else 'does not exist'}."
        )
    extension = os.path.splitext(path)[1].lower()
    if extension not in FILE_BUILDERS:
        raise ValueError(f"`--{flag}` {path!r} has an unsupported extension; use one of {', '.join(FILE_BUILDERS)}.")
    options = {"sep": "\t"} if extension == ".tsv" else {}
    try:
        dataset = datasets.load_dataset(
            FILE_BUILDERS[extension], data_files=path, split="train", cache_dir=cache_dir, **options
        )
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__ or error
        raise ValueError(f"`--{flag}` {path!r} could not be read as {extension[1:]}: {cause}") from error
    except ValueError as error:
        # An empty file reads as "Instruction "train" corresponds to no data!"
        problem = "has no rows" if "no data" in str(error) else f"could not be read: {error}"
        raise ValueError(f"`--{flag}` {path!r} {problem}.") from error
    return dataset


def _load_hub_splits(data_args, cache_dir: str | None) -> dict[str, datasets.Dataset]:
    try:
        loaded = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    except (ConnectionError, FileNotFoundError) as error:  # offline, a typo in the name, a private dataset
        raise ValueError(f"`--dataset_name` {data_args.dataset_name!r} could not be loaded: {error}") from error
    splits = {name: loaded[name] for name in ("train", "validation", "test") if name in loaded}
    if data_args.unlabeled_split_name is not None:
        if data_args.unlabeled_split_name not in loaded:
            raise ValueError(
                f"`unlabeled_split_name`={data_args.unlabeled_split_name!r} is not a split of "
                f"{data_args.dataset_name!r}; its splits are {sorted(loaded)}."
            )
        splits["unlabeled"] = loaded[data_args.unlabeled_split_name]
    return splits


def _check_columns(dataset, split: str, source: str, columns: dict[str, str]):
    for field, column in columns.items():
        if column not in dataset.column_names:
            raise ValueError(
                f"The {split} set ({source}) has no column {column!r} (set by `--{field}`); its columns are "
                f"{dataset.column_names}."
            )


def _subset(dataset, size: int, seed: int):
    """A random subset of `size` rows, in their original order."""
    if size >= len(dataset):
        return dataset
    rows = np.random.default_rng(seed).choice(len(dataset), size=size, replace=False)
    return dataset.select(np.sort(rows))


def _merge_pools(rest, unlabeled, text_column: str, label_column: str):
    """The rows left by label sampling plus an unlabeled set; labels stay (for diagnostics) only if both have them."""
    columns = [text_column]
    if label_column in unlabeled.column_names and rest.features[label_column] == unlabeled.features[label_column]:
        columns.append(label_column)
    rest = rest.select_columns(columns)
    # Files of different formats type the same text column differently (e.g. string, large_string).
    return datasets.concatenate_datasets([rest, unlabeled.select_columns(columns).cast(rest.features)])


def load_splits(data_args, text_column: str, label_column: str, cache_dir: str | None = None) -> dict:
    """
    Read the data of `hf-semisup train` and sample its labeled set.

    Args:
        data_args ([`~hf_semisup.arguments.DataArguments`]):
            Where the data come from (a Hub dataset, local files, or both: a file replaces the dataset's split).
        text_column (`str`), label_column (`str`):
            The columns holding texts and labels.

    Returns:
        `dict[str, Dataset]`: `"train"` (the labeled set) and, when there are some, `"unlabeled"` (the pool; a label
        column in it is kept only when every row has a label, for the pseudo-label accuracy diagnostic),
        `"validation"` and `"test"`. A held-out split whose labels are all missing (-1 or empty, as on the test split
        of GLUE) is left out with a warning.
    """
    sources = {}
    splits = {}
    if data_args.dataset_name is not None:
        splits = _load_hub_splits(data_args, cache_dir)
        sources = {split: f"split {split!r} of {data_args.dataset_name!r}" for split in splits}
    for split, flag in FILE_FLAGS.items():
        path = getattr(data_args, flag)
        if path is not None:
            splits[split] = read_data_file(path, flag, cache_dir)
            sources[split] = f"`--{flag}` {path!r}"
    if "train" not in splits:
        raise ValueError(f"{data_args.dataset_name!r} has no 'train' split; give the labeled set with `--train_file`.")

    text, both = {"text_column": text_column}, {"text_column": text_column, "label_column": label_column}
    for split, dataset in splits.items():
        _check_columns(dataset, split, sources[split], text if split == "unlabeled" else both)
        if len(dataset) == 0:
            raise ValueError(f"The {split} set ({sources[split]}) is empty.")
    for split in ("validation", "test"):
        if split in splits and all(_is_unlabeled(v) for v in splits[split][label_column]):
            logger.warning(f"The {split} set ({sources[split]}) has no labels (-1 or empty): it is not evaluated.")
            del splits[split]
    unlabeled = splits.get("unlabeled")
    if unlabeled is not None and label_column in unlabeled.column_names:
        if any(_is_unlabeled(v) for v in unlabeled[label_column]):
            splits["unlabeled"] = unlabeled = unlabeled.remove_columns(label_column)

    if data_args.num_labeled_per_class is not None:
        splits["train"], rest = sample_labeled_per_class(
            splits["train"], data_args.num_labeled_per_class, label_column, seed=data_args.label_sampling_seed
        )
        splits["unlabeled"] = rest if unlabeled is None else _merge_pools(rest, unlabeled, text_column, label_column)
    if data_args.max_unlabeled_samples is not None and "unlabeled" in splits:
        splits["unlabeled"] = _subset(
            splits["unlabeled"], data_args.max_unlabeled_samples, data_args.label_sampling_seed
        )
    return splits
