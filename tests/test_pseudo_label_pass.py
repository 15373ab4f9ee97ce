"""The labeling pass in one process: exact, memory-lean, inference mode and autocast, streamed pools, per-round files."""

import os

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_model, make_tokenizer, tiny_config, toy_dataset

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer
from hf_semisup.pseudo_labeling import (
    PseudoLabels,
    length_sorted_shard,
    read_pseudo_label_table,
    row_lengths,
    write_pseudo_label_table,
)


def make_trainer(tmp_path, tokenizer, unlabeled, model=None, **config):
    config = {"self_training_rounds": 0, **config}
    return SemiSupervisedTrainer(
        model=model if model is not None else make_model(seed=2, initializer_range=0.5),
        args=tiny_config(tmp_path / "output", **config),
        train_dataset=toy_dataset(16, seed=1),
        processing_class=tokenizer,
        unlabeled_dataset=unlabeled,
    )


def reference_predictions(model, tokenizer, texts):
    """One row at a time, no padding, no batching: what every labeling pass must reproduce."""
    model.eval()
    probabilities = []
    with torch.no_grad():
        for text in texts:
            probabilities.append(torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits[0], -1))
    return torch.stack(probabilities).numpy()


@pytest.mark.parametrize("num_rows,world_size", [(0, 2), (1, 2), (7, 3), (101, 2), (64, 4)])
def test_length_sorted_shards_cover_every_row_once(num_rows, world_size):
    lengths = np.random.default_rng(0).integers(1, 50, size=num_rows)
    shards = [length_sorted_shard(lengths, rank, world_size) for rank in range(world_size)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(num_rows))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    for shard in shards:
        assert np.all(np.diff(lengths[shard]) <= 0)  # longest first


def test_row_lengths_read_from_arrow_follow_selection(tokenizer):
    dataset = datasets.Dataset.from_dict({"input_ids": [[1] * n for n in (3, 9, 5, 1)]})
    assert row_lengths(dataset).tolist() == [3, 9, 5, 1]
    assert row_lengths(dataset.select([2, 0])).tolist() == [5, 3]
    with_length = dataset.add_column("length", [30, 90, 50, 10])
    assert row_lengths(with_length.select([1, 3])).tolist() == [90, 10]


def test_pseudo_label_matches_unbatched_reference_in_order(tmp_path, tokenizer):
    pool = toy_dataset(37, seed=5)
    trainer = make_trainer(tmp_path, tokenizer, pool, per_device_eval_batch_size=4, pseudo_label_top_k=2)
    labeled = trainer.pseudo_label()
    expected = reference_predictions(trainer.model, tokenizer, pool["text"][:])
    assert labeled["text"][:] == pool["text"][:]
    assert labeled["pseudo_label"][:] == expected.argmax(-1).tolist()
    assert 0 < sum(labeled["pseudo_label"][:]) < len(pool)
    np.testing.assert_allclose(labeled["confidence"][:], expected.max(-1), atol=1e-5)
    np.testing.assert_allclose(np.array(labeled["top_k_probabilities"][:]), -np.sort(-expected, axis=-1), atol=1e-5)
    assert [row[0] for row in labeled["top_k_labels"][:]] == labeled["pseudo_label"][:]


def test_labeling_runs_in_inference_mode_and_autocast(tmp_path, tokenizer):
    seen = []
    trainer = make_trainer(tmp_path, tokenizer, toy_dataset(9, seed=5), bf16=True)
    layer = trainer.model.bert.encoder.layer[0].output.dense

    def record(module, inputs, output):
        seen.append((torch.is_inference_mode_enabled(), output.dtype, module.training))

    handle = layer.register_forward_hook(record)
    trainer.model.train()
    trainer.pseudo_label()
    handle.remove()
    assert seen and all(entry == (True, torch.bfloat16, False) for entry in seen)
    assert trainer.model.training  # restored after the pass


def test_pool_tokenized_once_and_memory_mapped(tmp_path, tokenizer):
    trainer = make_trainer(
        tmp_path, tokenizer, toy_dataset(40, seed=5), self_training_rounds=1, max_steps=2, save_pseudo_labels=False
    )
    cache_dir = tmp_path / "output" / "pseudo_labels" / "cache"
    assert [f["filename"] for f in trainer.unlabeled_dataset.cache_files][0].startswith(str(cache_dir))

    calls = []
    original = type(tokenizer).__call__

    def counting_call(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    type(tokenizer).__call__ = counting_call
    try:
        trainer.train()
    finally:
        type(tokenizer).__call__ = original
    assert calls == []  # no round tokenizes the pool again
    assert trainer.self_training_history[1]["num_confident"] > 0
    assert not (tmp_path / "output" / "pseudo_labels" / "round-1.parquet").exists()  # save_pseudo_labels=False
    # A second trainer on the same pool and output_dir reuses the cached file.
    again = make_trainer(tmp_path, tokenizer, toy_dataset(40, seed=5))
    assert again.unlabeled_dataset.cache_files == trainer.unlabeled_dataset.cache_files


def test_iterable_pool_labeled_in_stream_order(tmp_path, tokenizer):
    pool = toy_dataset(45, seed=6)
    trainer = make_trainer(tmp_path, tokenizer, pool)
    stream = datasets.IterableDataset.from_generator(lambda: iter(pool))
    labeled_stream = trainer.pseudo_label(stream)
    assert isinstance(labeled_stream, datasets.IterableDataset)
    rows = list(labeled_stream)
    labeled = trainer.pseudo_label()
    assert [r["text"] for r in rows] == pool["text"][:]
    assert [r["pseudo_label"] for r in rows] == labeled["pseudo_label"][:]
    np.testing.assert_allclose([r["confidence"] for r in rows], labeled["confidence"][:], atol=1e-6)


def test_self_training_with_iterable_pool(tmp_path, tokenizer):
    pool = toy_dataset(60, seed=7)
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        pool.remove_columns("label").to_iterable_dataset(num_shards=2),
        self_training_rounds=1,
        max_steps=2,
        confidence_threshold=0.6,
        class_balance=False,
        max_pseudo_labels=25,
    )
    trainer.train()
    record = trainer.self_training_history[1]
    assert 0 < record["num_pseudo_labels"] <= 25
    assert record["num_train_examples"] == 16 + record["num_pseudo_labels"]
    assert "pseudo_label_accuracy" not in record  # a stream carries no gold labels to the trainer
    pseudo_labels, selected = read_pseudo_label_table(str(tmp_path / "output" / "pseudo_labels" / "round-1.parquet"))
    assert len(pseudo_labels) == len(pool) and len(selected) == record["num_pseudo_labels"]
    # The selected stream rows were written with their pseudo-labels and trained on.
    train_set = trainer.train_dataset.select(range(16, record["num_train_examples"]))
    expected = {tuple(tokenizer(pool[int(i)]["text"])["input_ids"]): int(pseudo_labels.labels[i]) for i in selected}
    assert {tuple(row["input_ids"]): row["labels"] for row in train_set} == expected


def test_round_files_hold_every_row_and_the_selection(tmp_path, tokenizer):
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        toy_dataset(50, seed=8),
        self_training_rounds=1,
        max_steps=2,
        confidence_threshold=0.6,
        pseudo_label_top_k=2,
    )
    trainer.train()
    table = pq.read_table(tmp_path / "output" / "pseudo_labels" / "round-1.parquet")
    assert table.column_names == ["index", "label", "confidence", "top_k_labels", "top_k_probabilities", "selected"]
    assert table["index"].to_pylist() == list(range(50))
    assert sum(table["selected"].to_pylist()) == trainer.self_training_history[1]["num_pseudo_labels"] > 0


def test_pseudo_label_table_is_written_atomically(tmp_path, monkeypatch):
    path = str(tmp_path / "labels" / "round-1.parquet")
    first = PseudoLabels(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7], dtype=np.float32))
    write_pseudo_label_table(path, first, selected=np.array([0]))
    loaded, selected = read_pseudo_label_table(path)
    assert loaded.labels.tolist() == [1, 0, 1] and selected.tolist() == [0]
    np.testing.assert_array_equal(loaded.confidences, first.confidences)

    def write_half_then_fail(table, where):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_pseudo_label_table(path, PseudoLabels(np.array([0, 0]), np.array([0.5, 0.5], dtype=np.float32)))
    monkeypatch.undo()
    assert read_pseudo_label_table(path)[0].labels.tolist() == [1, 0, 1]  # the previous file is intact
    assert os.listdir(tmp_path / "labels") == ["round-1.parquet"]  # and no temporary file is left


def test_gather_refuses_a_pool_it_did_not_cover(tmp_path, tokenizer):
    from hf_semisup.pseudo_labeling import _ShardResults

    trainer = make_trainer(tmp_path, tokenizer, toy_dataset(5, seed=5))
    results = _ShardResults(trainer.accelerator, top_k=0)
    features = [dict(tokenizer("good film")), dict(tokenizer("bad film"))]
    with torch.inference_mode():
        results.predict(trainer.model.eval(), trainer.data_collator(features), np.array([0, 0]))
    with pytest.raises(RuntimeError, match="2 rows \\(1 distinct\\) for a pool of 2"):
        results.gather(2)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_top_k_is_rejected(tmp_path, value):
    with pytest.raises(ValueError, match=rf"`pseudo_label_top_k`.*{value!r}"):
        SemiSupervisedConfig(output_dir=str(tmp_path), report_to="none", pseudo_label_top_k=value)


def test_top_k_above_the_number_of_classes_is_rejected(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="`pseudo_label_top_k` must be at most the model's 2 classes, got 3"):
        make_trainer(tmp_path, tokenizer, toy_dataset(5, seed=5), pseudo_label_top_k=3)


def test_stream_without_text_column_names_it(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, toy_dataset(5, seed=5))
    stream = datasets.IterableDataset.from_generator(lambda: iter([{"body": "good film"}]))
    with pytest.raises(ValueError, match="no column 'text'"):
        list(trainer.pseudo_label(stream))


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("multiple_of", [None, 8])
@pytest.mark.parametrize("columns", [("input_ids", "attention_mask", "token_type_ids"), ("input_ids",)])
def test_batches_padded_from_arrow_are_the_collators(tmp_path, padding_side, multiple_of, columns):
    from transformers import DataCollatorWithPadding

    from hf_semisup.batching import ArrowPadder, collated

    tokenizer = make_tokenizer(str(tmp_path))
    tokenizer.padding_side = padding_side
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple_of)
    rows = toy_dataset(37, seed=4).map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text", "label"])
    rows = rows.select_columns(list(columns)).shuffle(seed=0)  # an indices mapping over the Arrow table, as a pool has
    assert ArrowPadder.for_collator(collator) is not None
    order = np.random.default_rng(0).permutation(len(rows))
    for batch_rows, tensors in collated(rows, order, 8, collator):
        expected = collator([rows[int(i)] for i in batch_rows])
        assert sorted(tensors) == sorted(expected)
        for name, value in expected.items():
            assert tensors[name].dtype == value.dtype and torch.equal(tensors[name], value), name


def test_a_collator_of_another_kind_is_called_as_it_is(tmp_path, tokenizer):
    from transformers import DataCollatorWithPadding

    from hf_semisup.batching import ArrowPadder, collated

    calls = []

    def collator(features):
        calls.append(len(features))
        return DataCollatorWithPadding(tokenizer)(features)

    rows = toy_dataset(10).map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text", "label"])
    assert ArrowPadder.for_collator(collator) is None
    batches = list(collated(rows, np.arange(10), 4, collator))
    assert calls == [4, 4, 2] and [len(rows_) for rows_, _ in batches] == [4, 4, 2]


@pytest.mark.parametrize("threaded", [True, None])
def test_batches_made_ahead_come_in_order_and_errors_reach_the_consumer(threaded):
    from hf_semisup.batching import ahead

    items = [(np.array([i]), {"x": torch.tensor([i])}) for i in range(20)]
    got = list(ahead(iter(items), torch.device("cpu"), depth=2, threaded=threaded))
    assert [int(rows[0]) for rows, _ in got] == list(range(20))

    def failing():
        yield items[0]
        raise RuntimeError("a bad batch")

    with pytest.raises(RuntimeError, match="a bad batch"):
        list(ahead(failing(), torch.device("cpu"), threaded=threaded))
    # A consumer that stops early leaves no thread behind.
    import threading

    before = threading.active_count()
    for _ in ahead(iter(items), torch.device("cpu"), depth=2, threaded=threaded):
        break
    assert threading.active_count() == before


def test_rows_taken_from_arrow_are_the_datasets_rows(tmp_path):
    import datasets

    from hf_semisup.compat import take_rows

    base = datasets.Dataset.from_dict({"input_ids": [[i] * (i % 5 + 1) for i in range(30)], "text": ["x"] * 30})
    base.save_to_disk(str(tmp_path / "pool"))
    kinds = {
        "in memory": base,
        "memory-mapped": datasets.load_from_disk(str(tmp_path / "pool")),
        "shuffled": base.shuffle(seed=1),
        "concatenated, then selected": datasets.concatenate_datasets([base, base]).select(range(55, 3, -2)),
    }
    for kind, dataset in kinds.items():
        rows = np.random.default_rng(0).permutation(len(dataset))[:17]
        taken = take_rows(dataset, ["input_ids"], rows)
        assert taken.column_names == ["input_ids"], kind
        assert taken.to_pylist() == [{"input_ids": dataset[int(i)]["input_ids"]} for i in rows], kind
