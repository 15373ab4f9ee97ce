"""Reading local files and dataset folders, and sampling the labeled set: stratified, reproducible, disjoint."""

import json
from collections import Counter

import pytest
from datasets import ClassLabel, Dataset

from hf_semisup.arguments import DataArguments
from hf_semisup.loading import load_splits, sample_labeled_per_class


def rows_with_ids(counts: dict[str, int]):
    """Rows of known classes, each with a unique `id`, classes interleaved as in a shuffled file."""
    labels = [label for label, count in counts.items() for _ in range(count)]
    labels = [labels[i] for i in sorted(range(len(labels)), key=lambda i: (i * 7919) % len(labels))]
    return {"id": list(range(len(labels))), "text": [f"text {i}" for i in range(len(labels))], "label": labels}


def write(dataset: Dataset, path):
    suffix = path.suffix
    if suffix == ".csv":
        dataset.to_csv(str(path), index=False)
    elif suffix == ".tsv":
        dataset.to_csv(str(path), index=False, sep="\t")
    elif suffix == ".parquet":
        dataset.to_parquet(str(path))
    elif suffix == ".json":
        path.write_text(json.dumps(dataset.to_list()))
    else:
        dataset.to_json(str(path))  # json lines
    return str(path)


def load(**kwargs):
    return load_splits(DataArguments(**kwargs), text_column="text", label_column="label")


# ---- Label sampling -------------------------------------------------------------------------------------------------
def test_sampling_is_stratified_and_disjoint():
    data = Dataset.from_dict(rows_with_ids({"pos": 30, "neg": 20, "neutral": 7}))
    labeled, pool = sample_labeled_per_class(data, 5, "label", seed=0)
    assert Counter(labeled["label"]) == {"pos": 5, "neg": 5, "neutral": 5}
    assert not set(labeled["id"]) & set(pool["id"])  # no labeled row in the pool
    assert sorted(list(labeled["id"]) + list(pool["id"])) == list(data["id"])  # and no row lost
    # The pool keeps each row's own label, hidden from training by the trainer, for the diagnostics.
    truth = dict(zip(data["id"], data["label"]))
    assert all(truth[i] == label for i, label in zip(pool["id"], pool["label"]))


def test_sampling_is_reproducible_per_seed():
    data = Dataset.from_dict(rows_with_ids({"pos": 40, "neg": 40}))
    first = list(sample_labeled_per_class(data, 8, "label", seed=3)[0]["id"])
    assert list(sample_labeled_per_class(data, 8, "label", seed=3)[0]["id"]) == first
    assert list(sample_labeled_per_class(data, 8, "label", seed=4)[0]["id"]) != first


def test_sampling_class_label_ints_and_too_many():
    data = Dataset.from_dict(rows_with_ids({0: 10, 1: 4})).cast_column("label", ClassLabel(names=["neg", "pos"]))
    labeled, _ = sample_labeled_per_class(data, 4, "label", seed=0)
    assert Counter(labeled["label"]) == {0: 4, 1: 4}
    with pytest.raises(ValueError, match=r"`num_labeled_per_class`=5 .* class 1 has \(4 rows\)"):
        sample_labeled_per_class(data, 5, "label", seed=0)


def test_load_splits_samples_and_caps_the_pool(tmp_path):
    data = Dataset.from_dict(rows_with_ids({"pos": 60, "neg": 40}))
    path = write(data, tmp_path / "train.jsonl")
    splits = load(train_file=path, num_labeled_per_class=10, label_sampling_seed=1)
    assert Counter(splits["train"]["label"]) == {"pos": 10, "neg": 10}
    assert len(splits["unlabeled"]) == 80 and not set(splits["train"]["id"]) & set(splits["unlabeled"]["id"])

    capped = load(train_file=path, num_labeled_per_class=10, label_sampling_seed=1, max_unlabeled_samples=25)
    assert list(capped["train"]["id"]) == list(splits["train"]["id"])  # the cap does not change the labeled draw
    ids = list(capped["unlabeled"]["id"])
    assert len(ids) == 25 and set(ids) <= set(splits["unlabeled"]["id"]) and ids == sorted(ids)
    again = load(train_file=path, num_labeled_per_class=10, label_sampling_seed=1, max_unlabeled_samples=25)
    assert list(again["unlabeled"]["id"]) == ids
    other = load(train_file=path, num_labeled_per_class=10, label_sampling_seed=2, max_unlabeled_samples=25)
    assert list(other["unlabeled"]["id"]) != ids


def test_sampled_rest_and_an_unlabeled_file_make_one_pool(tmp_path):
    train = write(Dataset.from_dict(rows_with_ids({"pos": 10, "neg": 10})), tmp_path / "train.csv")
    extra = write(Dataset.from_dict({"text": ["more a", "more b", "more c"]}), tmp_path / "extra.parquet")
    splits = load(train_file=train, unlabeled_file=extra, num_labeled_per_class=4)
    assert len(splits["unlabeled"]) == 12 + 3
    assert list(splits["unlabeled"]["text"][-3:]) == ["more a", "more b", "more c"]
    # The sampled rest keeps its labels (for the pseudo-label accuracy); the file's rows have none.
    labels = list(splits["unlabeled"]["label"])
    assert None not in labels[:12] and labels[12:] == [None, None, None]


def test_a_csv_and_a_jsonl_pool_keep_their_labels(tmp_path):
    # A csv reads strings as `large_string`, a jsonl as `string`: the labels of both once vanished from the pool.
    train = write(Dataset.from_dict(rows_with_ids({"pos": 10, "neg": 10})), tmp_path / "train.csv")
    extra = write(Dataset.from_dict({"text": ["more a", "more b"], "label": ["pos", "neg"]}), tmp_path / "extra.jsonl")
    splits = load(train_file=train, unlabeled_file=extra, num_labeled_per_class=4)
    assert len(splits["unlabeled"]) == 12 + 2 and list(splits["unlabeled"]["label"][-2:]) == ["pos", "neg"]
    assert None not in splits["unlabeled"]["label"]


# ---- File formats and Hub-style datasets --------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_file_format_reads_the_same_rows(tmp_path, suffix):
    data = Dataset.from_dict(rows_with_ids({"pos": 3, "neg": 3}))
    train = write(data, tmp_path / f"train{suffix}")
    test = write(data.select(range(4)), tmp_path / f"test{suffix}")
    splits = load(train_file=train, test_file=test, unlabeled_file=train)
    assert sorted(splits) == ["test", "train", "unlabeled"]
    assert list(splits["train"]["text"]) == list(data["text"])
    assert list(splits["train"]["label"]) == list(data["label"])
    assert list(splits["test"]["text"]) == list(data["text"][:4])


def test_dataset_folder_through_load_dataset(tmp_path):
    """`--dataset_name` goes through `load_dataset(name, config)`; a local folder exercises that path offline."""
    folder = tmp_path / "reviews"
    folder.mkdir()
    # Integer labels, as Hub datasets have them (a folder's splits share one schema).
    write(Dataset.from_dict(rows_with_ids({1: 8, 0: 8})), folder / "train.csv")
    write(Dataset.from_dict(rows_with_ids({1: 2, 0: 2})), folder / "validation.csv")
    write(Dataset.from_dict({"text": ["a", "b"], "label": [-1, -1]}), folder / "test.csv")
    splits = load(dataset_name=str(folder), num_labeled_per_class=3)
    # The test split has no labels (-1, as on GLUE): it is left out rather than failing the evaluation.
    assert sorted(splits) == ["train", "unlabeled", "validation"]
    assert len(splits["train"]) == 6 and len(splits["unlabeled"]) == 10

    # A local file replaces the dataset's split of the same name.
    own = write(Dataset.from_dict(rows_with_ids({1: 1, 0: 1})), tmp_path / "own_validation.jsonl")
    assert len(load(dataset_name=str(folder), validation_file=own, num_labeled_per_class=3)["validation"]) == 2

    with pytest.raises(ValueError, match=r"`unlabeled_split_name`='unsupervised' .* splits are \["):
        load(dataset_name=str(folder), unlabeled_split_name="unsupervised")


def test_unlabeled_file_keeps_the_labels_it_has(tmp_path):
    train = write(Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}), tmp_path / "train.jsonl")
    pool = write(Dataset.from_dict({"text": ["c", "d", "e"], "label": [-1, -1, 1]}), tmp_path / "pool.jsonl")
    splits = load(train_file=train, unlabeled_file=pool)
    assert list(splits["unlabeled"]["label"]) == [-1, -1, 1]  # scored on the row that has one
    unlabeled = write(Dataset.from_dict({"text": ["c", "d"], "label": [-1, -1]}), tmp_path / "unlabeled.jsonl")
    assert load(train_file=train, unlabeled_file=unlabeled)["unlabeled"].column_names == ["text"]
    labeled_pool = write(Dataset.from_dict({"text": ["c", "d"], "label": [0, 1]}), tmp_path / "labeled_pool.jsonl")
    assert list(load(train_file=train, unlabeled_file=labeled_pool)["unlabeled"]["label"]) == [0, 1]


def test_empty_file_and_unreadable_file(tmp_path):
    train = write(Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}), tmp_path / "train.jsonl")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(ValueError, match="`--test_file` .*empty.csv.* no rows"):
        load(train_file=train, test_file=str(empty))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(ValueError, match="`--unlabeled_file` .*garbage.parquet"):
        load(train_file=train, unlabeled_file=str(garbage))


def test_errors_name_the_row_of_the_file_not_of_the_sample(tmp_path):
    data = rows_with_ids({"pos": 5, "neg": 5})
    data["text"][7] = None
    train = write(Dataset.from_dict(data), tmp_path / "train.jsonl")
    with pytest.raises(
        ValueError, match=r"train set \(`--train_file` '.*train.jsonl'\)'s text column 'text' .* row 7 "
    ):
        load(train_file=train, num_labeled_per_class=2)
    fractional = write(Dataset.from_dict({"text": ["a", "b", "c"], "label": [0.0, 0.5, 1.0]}), tmp_path / "f.jsonl")
    with pytest.raises(ValueError, match=r"non-integer label 0.5 at row 1: a label is a class name or an integer"):
        load(train_file=fractional, num_labeled_per_class=1)


def test_tokenizing_in_several_processes_gives_the_same_rows(tmp_path, tokenizer):
    from conftest import make_model, tiny_config, toy_dataset

    from hf_semisup import SemiSupervisedTrainer

    prepared = []
    for num_proc in (None, 2):
        trainer = SemiSupervisedTrainer(
            make_model(),
            tiny_config(tmp_path / f"num-proc-{num_proc}", dataset_num_proc=num_proc),
            train_dataset=toy_dataset(16, seed=1),
            eval_dataset=toy_dataset(10, seed=2),
            processing_class=tokenizer,
            unlabeled_dataset=toy_dataset(57, seed=3),
        )
        prepared.append([trainer.labeled_dataset, trainer.unlabeled_dataset, trainer.eval_dataset])
    for one, two in zip(*prepared):
        assert one.column_names == two.column_names and one.to_dict() == two.to_dict()
    # The pool was tokenized in 2 processes (a cache shard each), into output_dir's cache, memory-mapped.
    shards = [f["filename"] for f in prepared[1][1].cache_files]
    assert len(shards) == 2 and all(str(tmp_path / "num-proc-2") in name and "_of_00002" in name for name in shards)


def test_dataset_num_proc_is_checked(tmp_path):
    from hf_semisup import SemiSupervisedConfig

    with pytest.raises(ValueError, match="dataset_num_proc"):
        SemiSupervisedConfig(output_dir=str(tmp_path), dataset_num_proc=0)
