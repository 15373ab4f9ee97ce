"""Every bad input named by the core issue fails before training with a ValueError naming the field and value."""

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_model, tiny_config, toy_dataset
from datasets import ClassLabel, Dataset, Features, Value

from hf_semisup import SemiSupervisedTrainer


def build(tmp_path, tokenizer, rounds=1, **datasets):
    kwargs = {"train_dataset": toy_dataset(8), "unlabeled_dataset": toy_dataset(8, seed=1), **datasets}
    return SemiSupervisedTrainer(
        make_model(), tiny_config(tmp_path, self_training_rounds=rounds), processing_class=tokenizer, **kwargs
    )


def expect_error(tmp_path, tokenizer, *fragments, rounds=1, **datasets):
    with pytest.raises(ValueError) as error:
        build(tmp_path, tokenizer, rounds=rounds, **datasets)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)


def test_empty_labeled_set(tmp_path, tokenizer):
    expect_error(tmp_path, tokenizer, "train_dataset", "empty", train_dataset=toy_dataset(8).select([]))


def test_empty_unlabeled_set_with_rounds(tmp_path, tokenizer):
    expect_error(tmp_path, tokenizer, "unlabeled_dataset", "empty", unlabeled_dataset=toy_dataset(8).select([]))


def test_missing_unlabeled_set_with_rounds(tmp_path, tokenizer):
    expect_error(tmp_path, tokenizer, "unlabeled_dataset", "self_training_rounds", unlabeled_dataset=None)


def test_empty_unlabeled_set_without_rounds_is_fine(tmp_path, tokenizer):
    build(tmp_path, tokenizer, rounds=0, unlabeled_dataset=toy_dataset(8).select([]))


def test_missing_text_column(tmp_path, tokenizer):
    labeled = toy_dataset(8).rename_column("text", "sentence")
    expect_error(tmp_path, tokenizer, "'text'", "text_column", "sentence", train_dataset=labeled)
    unlabeled = Dataset.from_dict({"review": ["good movie"]})
    expect_error(tmp_path, tokenizer, "unlabeled", "'text'", "review", unlabeled_dataset=unlabeled)


def test_missing_label_column(tmp_path, tokenizer):
    labeled = toy_dataset(8).remove_columns("label")
    expect_error(tmp_path, tokenizer, "'label'", "label_column", train_dataset=labeled)


def test_label_outside_the_model_classes(tmp_path, tokenizer):
    ints = Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [0, 1, 5]})
    expect_error(tmp_path, tokenizer, "5", "row 2", train_dataset=ints)
    negative = Dataset.from_dict({"text": ["good", "bad"], "label": [0, -1]})
    expect_error(tmp_path, tokenizer, "-1", "row 1", train_dataset=negative)


def test_class_name_not_among_the_model_classes(tmp_path, tokenizer):
    model = make_model()
    model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    labeled = Dataset.from_dict({"text": ["good", "bad", "meh"], "label": ["positive", "negative", "neutral"]})
    with pytest.raises(ValueError) as error:
        SemiSupervisedTrainer(
            model, tiny_config(tmp_path, self_training_rounds=0), train_dataset=labeled, processing_class=tokenizer
        )
    assert "'neutral'" in str(error.value) and "row 2" in str(error.value)


def test_more_classes_than_the_model_has(tmp_path, tokenizer):
    labeled = Dataset.from_dict({"text": ["good", "bad", "meh"], "label": ["pos", "neg", "neu"]})
    expect_error(tmp_path, tokenizer, "3 classes", "num_labels", train_dataset=labeled)


def test_non_string_text(tmp_path, tokenizer):
    labeled = Dataset.from_dict({"text": [1, 2], "label": [0, 1]})
    expect_error(tmp_path, tokenizer, "'text'", "strings", "row 0", train_dataset=labeled)
    unlabeled = Dataset.from_dict({"text": ["fine", None]})
    expect_error(tmp_path, tokenizer, "unlabeled", "row 1", "None", unlabeled_dataset=unlabeled)


def test_bad_eval_set(tmp_path, tokenizer):
    expect_error(tmp_path, tokenizer, "eval", "'label'", eval_dataset=toy_dataset(4).remove_columns("label"))


def test_threshold_outside_the_open_interval(tmp_path):
    for value in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"confidence_threshold.*{value}"):
            tiny_config(tmp_path, confidence_threshold=value)


def test_empty_or_blank_text_is_named_with_its_row(tmp_path, tokenizer):
    labeled = Dataset.from_dict({"text": ["good film", "", "bad film"], "label": [1, 0, 0]})
    expect_error(tmp_path, tokenizer, "labeled", "'text'", "empty", "row 1", train_dataset=labeled)
    unlabeled = Dataset.from_dict({"text": ["fine", "dull", "  \t"]}).select(
        [2, 0, 1]
    )  # a view: rows as the user sees
    expect_error(tmp_path, tokenizer, "unlabeled", "empty", "row 0", "'  \\t'", unlabeled_dataset=unlabeled)
    evaluated = Dataset.from_dict({"text": ["fine", None], "label": [1, 0]})
    expect_error(tmp_path, tokenizer, "eval", "row 1", "None", eval_dataset=evaluated)


def test_texts_shared_by_the_labeled_set_and_the_pool_are_dropped_from_the_pool(tmp_path, tokenizer, caplog):
    labeled = toy_dataset(8)
    pool = toy_dataset(6, seed=1)
    texts = pool["text"][:]
    texts[1], texts[4] = labeled["text"][0], labeled["text"][5]
    pool = Dataset.from_dict({"text": texts, "label": pool["label"][:]})
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        trainer = build(tmp_path, tokenizer, train_dataset=labeled, unlabeled_dataset=pool)
    assert "2 row(s) of the unlabeled set" in caplog.text and "rows 1, 4" in caplog.text
    kept = [0, 2, 3, 5]
    assert trainer.unlabeled_source["text"][:] == [texts[i] for i in kept]
    assert len(trainer.unlabeled_dataset) == 4
    gold = [{"negative": 0, "positive": 1}[pool["label"][i]] for i in kept]
    assert trainer.unlabeled_gold_labels.tolist() == gold
    assert trainer.pseudo_label()["text"][:] == [texts[i] for i in kept]

    # The labeled set given as the pool too: every row is dropped, and the warning says so before the empty-pool error.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_semisup"), pytest.raises(ValueError, match="is empty"):
        build(tmp_path, tokenizer, train_dataset=labeled, unlabeled_dataset=labeled)
    assert "8 row(s) of the unlabeled set" in caplog.text and "nothing is left" in caplog.text


def test_model_classes_without_a_labeled_example(tmp_path, tokenizer):
    ints = Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [0, 1, 1]})
    with pytest.raises(ValueError) as error:
        SemiSupervisedTrainer(
            make_model(num_labels=3), tiny_config(tmp_path, self_training_rounds=0), train_dataset=ints,
            processing_class=tokenizer,
        )  # fmt: skip
    assert "`num_labels`=3" in str(error.value) and "'LABEL_2'" in str(error.value)

    model = make_model(num_labels=3)
    names = ["negative", "neutral", "positive"]
    model.config.id2label, model.config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    with pytest.raises(ValueError, match=r"`num_labels`=3.*\['neutral'\]"):
        SemiSupervisedTrainer(
            model, tiny_config(tmp_path, self_training_rounds=0), train_dataset=toy_dataset(8),
            processing_class=tokenizer,
        )  # fmt: skip


def test_raw_text_without_a_tokenizer(tmp_path):
    with pytest.raises(
        ValueError, match=r"labeled set \(`train_dataset`\) holds raw text .*'text'.*`processing_class`"
    ):
        SemiSupervisedTrainer(
            make_model(), tiny_config(tmp_path, self_training_rounds=0), train_dataset=toy_dataset(8)
        )


def test_datasets_of_another_type_are_named(tmp_path, tokenizer):
    rows = [{"text": "good film", "label": 1}, {"text": "bad film", "label": 0}]
    with pytest.raises(TypeError, match=r"`train_dataset` must be a `datasets.Dataset`, got list.*from_list"):
        build(tmp_path, tokenizer, train_dataset=rows)
    with pytest.raises(TypeError, match=r"`eval_dataset` must be a `datasets.Dataset`, got dict"):
        build(tmp_path, tokenizer, eval_dataset={"dev": {"text": ["good"], "label": [1]}})
    with pytest.raises(TypeError, match=r"`unlabeled_dataset` must be a `datasets.Dataset`, got list"):
        build(tmp_path, tokenizer, unlabeled_dataset=["good film"])


def test_pool_labels_that_do_not_fit_only_cost_the_accuracy_diagnostic(tmp_path, tokenizer, caplog):
    pool = toy_dataset(8, seed=1)
    labeled_pool = build(tmp_path, tokenizer, unlabeled_dataset=pool)
    assert list(labeled_pool.unlabeled_gold_labels) == [["negative", "positive"].index(y) for y in pool["label"]]

    odd = pool.map(lambda row, i: {"label": "neutral" if i == 5 else row["label"]}, with_indices=True)
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        trainer = build(tmp_path, tokenizer, unlabeled_dataset=odd)
    assert trainer.unlabeled_gold_labels is None and len(trainer.unlabeled_dataset) == 8
    assert "'neutral' at row 5" in caplog.text and "pseudo_label_accuracy" in caplog.text

    caplog.clear()
    unknown = pool.map(lambda row: {"label": -1})
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        trainer = build(tmp_path, tokenizer, unlabeled_dataset=unknown)
    assert trainer.unlabeled_gold_labels is None and caplog.text == ""


def test_class_names_that_differ_only_in_case_or_spaces_are_flagged(caplog):
    from transformers import BertConfig

    from hf_semisup.modeling import head_label_kwargs

    labeled = Dataset.from_dict(
        {"text": ["a", "b", "c", "d"], "label": ["negative", "positive", "positive ", "Negative"]}
    )
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        kwargs = head_label_kwargs(BertConfig(), labeled, "label")
    assert kwargs["num_labels"] == 4  # each is still a class of its own
    assert "'Negative', 'negative'" in caplog.text and "'positive', 'positive '" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        head_label_kwargs(BertConfig(), labeled.select([0, 1]), "label")
    assert caplog.text == ""


def test_a_tokenizer_that_does_not_know_the_texts_is_flagged(tmp_path, tokenizer, caplog):
    from transformers import BertTokenizerFast

    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        build(tmp_path, tokenizer)
    assert "unknown token" not in caplog.text

    vocab = tmp_path / "special-only.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")  # what a model folder without tokenizer files gets
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        build(tmp_path, BertTokenizerFast(vocab=str(vocab)))
    assert "of the tokens of the labeled set are the unknown token '[UNK]'" in caplog.text
    assert "6 tokens" in caplog.text


def test_class_label_columns_with_missing_labels(tmp_path, tokenizer):
    # IMDb's `unsupervised` split: a `ClassLabel` column of -1. As a pool it is simply unlabeled; in the labeled set
    # the row is named (a -1 once read as the last class name, or failed with "Invalid integer class label -1").
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    rows = toy_dataset(8, seed=1)
    pool = Dataset.from_dict({"text": rows["text"], "label": [-1] * 8}, features=features)
    assert build(tmp_path, tokenizer, unlabeled_dataset=pool).unlabeled_gold_labels is None

    partly = Dataset.from_dict({"text": rows["text"], "label": [0, 1, 1, 0, -1, 1, 0, 0]}, features=features)
    expect_error(tmp_path, tokenizer, "no label", "in row 4", train_dataset=partly)


def test_a_misspelt_metric_for_best_model_fails_before_training(tmp_path, tokenizer):
    def config(**kwargs):
        return tiny_config(tmp_path, self_training_rounds=0, eval_strategy="epoch", save_strategy="epoch", **kwargs)

    with pytest.raises(ValueError, match=r"`metric_for_best_model`='eval_acc'.*'loss', 'accuracy', 'f1'"):
        SemiSupervisedTrainer(
            make_model(), config(load_best_model_at_end=True, metric_for_best_model="eval_acc"),
            train_dataset=toy_dataset(8), eval_dataset=toy_dataset(8, seed=1), processing_class=tokenizer,
        )  # fmt: skip
    for name in ("accuracy", "eval_f1", "loss"):  # with or without the prefix, as transformers takes them
        SemiSupervisedTrainer(
            make_model(), config(load_best_model_at_end=True, metric_for_best_model=name),
            train_dataset=toy_dataset(8), eval_dataset=toy_dataset(8, seed=1), processing_class=tokenizer,
        )  # fmt: skip
    # Metrics of the user's own `compute_metrics` are not known in advance.
    SemiSupervisedTrainer(
        make_model(), config(load_best_model_at_end=True, metric_for_best_model="eval_recall"),
        train_dataset=toy_dataset(8), eval_dataset=toy_dataset(8, seed=1), processing_class=tokenizer,
        compute_metrics=lambda prediction: {"recall": 1.0},
    )  # fmt: skip


def test_class_ids_beside_class_names_are_flagged(tmp_path, tokenizer, caplog):
    # Labeled set with class names, eval set with integers: read as ids in the model's order, which may not be the
    # file's.
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        build(tmp_path, tokenizer, eval_dataset=toy_dataset(8, seed=2, names=None))
    assert "eval set (`eval_dataset`)'s label column 'label' holds class ids" in caplog.text
    assert "read as 0 = 'negative', 1 = 'positive'" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        build(tmp_path, tokenizer, eval_dataset=toy_dataset(8, seed=2))  # class names throughout
        build(tmp_path, tokenizer, train_dataset=toy_dataset(8, names=None), eval_dataset=toy_dataset(8, names=None))
    assert "class ids" not in caplog.text


def test_a_fractional_label_is_named_and_whole_floats_are_class_ids(tmp_path, tokenizer):
    # 1.0 is a class id (a csv column with an empty cell reads as floats); 0.5 is the label that cannot be one.
    fractional = Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [0.0, 0.5, 1.0]})
    expect_error(tmp_path, tokenizer, "non-integer label 0.5 at row 1", train_dataset=fractional)
    whole = Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [0.0, 1.0, 1.0]})
    trainer = SemiSupervisedTrainer(
        make_model(), tiny_config(tmp_path, self_training_rounds=0), train_dataset=whole, processing_class=tokenizer
    )
    assert trainer.labeled_dataset["labels"] == [0, 1, 1]


def test_pseudo_label_accuracy_counts_the_pool_rows_that_have_a_label(tmp_path, tokenizer, caplog):
    pool = toy_dataset(30, seed=2)
    gold = list(pool["label"])
    partial = pool.remove_columns("label").add_column("label", [None if i % 3 else g for i, g in enumerate(gold)])
    config = tiny_config(tmp_path, self_training_rounds=1, max_steps=2, confidence_threshold=0.5, class_balance=False)
    trainer = SemiSupervisedTrainer(
        make_model(), config, train_dataset=toy_dataset(16), processing_class=tokenizer, unlabeled_dataset=partial
    )
    assert "10 of the 30 rows of the unlabeled set (`unlabeled_dataset`) have a label" in caplog.text
    trainer.train()
    record = trainer.self_training_history[1]
    table = pq.read_table(tmp_path / "pseudo_labels" / "round-1.parquet").to_pydict()
    labels, kept = np.asarray(table["label"]), np.asarray(table["selected"])
    known = np.asarray([i % 3 == 0 for i in range(30)])
    ids = np.asarray([{"negative": 0, "positive": 1}[g] for g in gold])
    assert kept.all()
    assert record["pseudo_label_accuracy"] == pytest.approx(float((labels == ids)[known & kept].mean()))
    assert record["teacher_pool_accuracy"] == pytest.approx(float((labels == ids)[known].mean()))
