"""
Reading the splits of `hf-semisup train`: local files (csv, tsv, json, jsonl, parquet) or a Hub dataset, and turning a
labeled train set into a few labels per class plus an unlabeled pool whose hidden labels only serve diagnostics.
"""

import logging
import os

import datasets
import numpy as np

from .data import check_label_values, check_texts, is_missing_label


logger = logging.getLogger(__name__)

# File formats `datasets` reads, by extension, with the builder that reads them.
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
FILE_FLAGS = {
    "train": "train_file",
    "unlabeled": "unlabeled_file",
    "validation": "validation_file",
    "test": "test_file",
}


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


def _merge_pools(rest, unlabeled, text_column: str, label_column: str, source: str):
    """
    The rows left by label sampling plus an unlabeled set, with the labels they have (for the pseudo-label accuracy
    only): an unlabeled set without labels, or whose labels cannot be read as the labeled file's, gets empty ones.
    """
    rest = rest.select_columns([text_column, label_column])
    feature = rest.features[label_column]
    if label_column in unlabeled.column_names:
        unlabeled = unlabeled.select_columns([text_column, label_column])
        try:
            # Files of different formats type the same column differently (e.g. string, large_string).
            return datasets.concatenate_datasets([rest, unlabeled.cast(rest.features)])
        except (ValueError, TypeError) as error:
            logger.warning(
                f"The labels of the unlabeled set ({source}) cannot be read as the labeled set's "
                f"({unlabeled.features[label_column]} against {feature}: {error}): they do not count in "
                "`pseudo_label_accuracy`."
            )
    unlabeled = unlabeled.select_columns([text_column]).add_column(label_column, [None] * len(unlabeled))
    return datasets.concatenate_datasets([rest, unlabeled.cast(rest.features)])


def split_sources(data_args) -> dict[str, str]:
    """
    Where each split [`load_splits`] reads comes from, as errors name it: `"train"`, `"unlabeled"`, `"validation"`,
    `"test"` (with a Hub dataset, a split it lacks has a source all the same).
    """
    sources = {}
    if data_args.dataset_name is not None:
        hub_names = {"train": "train", "validation": "validation", "test": "test"}
        hub_names["unlabeled"] = data_args.unlabeled_split_name or "unlabeled"
        sources = {split: f"split {name!r} of {data_args.dataset_name!r}" for split, name in hub_names.items()}
    for split, flag in FILE_FLAGS.items():
        path = getattr(data_args, flag)
        if path is not None:
            sources[split] = f"`--{flag}` {path!r}"
    return sources


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
        column in it is kept when some row has a label, for the pseudo-label accuracy diagnostic),
        `"validation"` and `"test"`. A held-out split whose labels are all missing (-1 or empty, as on the test split
        of GLUE) is left out with a warning.
    """
    sources = split_sources(data_args)
    splits = _load_hub_splits(data_args, cache_dir) if data_args.dataset_name is not None else {}
    for split, flag in FILE_FLAGS.items():
        path = getattr(data_args, flag)
        if path is not None:
            splits[split] = read_data_file(path, flag, cache_dir)
    if "train" not in splits:
        raise ValueError(f"{data_args.dataset_name!r} has no 'train' split; give the labeled set with `--train_file`.")

    text, both = {"text_column": text_column}, {"text_column": text_column, "label_column": label_column}
    for split, dataset in splits.items():
        _check_columns(dataset, split, sources[split], text if split == "unlabeled" else both)
        if len(dataset) == 0:
            raise ValueError(f"The {split} set ({sources[split]}) is empty.")
        # Checked as read, so that an error names the row of the file, not of a sample drawn from it.
        check_texts(dataset, text_column, f"{split} set ({sources[split]})")
        if split != "unlabeled":
            check_label_values(dataset, label_column, f"{split} set ({sources[split]})")
    for split in ("validation", "test"):
        if split in splits and all(is_missing_label(v) for v in splits[split][label_column]):
            logger.warning(f"The {split} set ({sources[split]}) has no labels (-1 or empty): it is not evaluated.")
            del splits[split]
    unlabeled = splits.get("unlabeled")
    if unlabeled is not None and label_column in unlabeled.column_names:
        if all(is_missing_label(v) for v in unlabeled[label_column]):  # e.g. IMDb's unsupervised split (-1)
            splits["unlabeled"] = unlabeled = unlabeled.remove_columns(label_column)

    if data_args.num_labeled_per_class is not None:
        splits["train"], rest = sample_labeled_per_class(
            splits["train"], data_args.num_labeled_per_class, label_column, seed=data_args.label_sampling_seed
        )
        if unlabeled is not None:
            rest = _merge_pools(rest, unlabeled, text_column, label_column, sources["unlabeled"])
        splits["unlabeled"] = rest
    if data_args.max_unlabeled_samples is not None and "unlabeled" in splits:
        splits["unlabeled"] = _subset(
            splits["unlabeled"], data_args.max_unlabeled_samples, data_args.label_sampling_seed
        )
    return splits


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
    for label in sorted({v for v in values if not is_missing_label(v)}, key=str):
        rows = np.flatnonzero(np.asarray([v == label for v in values]))
        if len(rows) < num_per_class:
            raise ValueError(
                f"`num_labeled_per_class`={num_per_class} is more than class {label!r} has ({len(rows)} rows)."
            )
        chosen.extend(rng.choice(rows, size=num_per_class, replace=False).tolist())
    chosen = sorted(chosen)
    rest = np.setdiff1d(np.arange(len(dataset)), chosen)
    return dataset.select(chosen), dataset.select(rest)
