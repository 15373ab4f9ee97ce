"""Bad input to `hf-semisup train`: one clear line on stderr naming what is wrong, a non-zero exit, no traceback."""

import json
import logging

import pytest
from conftest import make_model, make_tokenizer, tiny_config, toy_rows

from hf_semisup.cli import build_trainer, main, make_train_parser, parse_train_args


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = toy_rows(30, seed=0)
    with open(path, "w") as f:
        for text, label in zip(rows["text"], rows["label"]):
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    return str(path)


def fails(capsys, argv, *fragments):
    code = main(["train", "--output_dir", "unused", *argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hf-semisup")]
    assert code == 2
    assert "Traceback" not in err
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_missing_data_file(capsys, tmp_path, train_file):
    missing = str(tmp_path / "nope.csv")
    fails(capsys, ["--model_name_or_path", "m", "--train_file", missing], "--train_file", missing, "does not exist")
    fails(
        capsys,
        ["--model_name_or_path", "m", "--train_file", train_file, "--unlabeled_file", missing],
        "--unlabeled_file",
        missing,
    )


def test_unsupported_file_extension(capsys):
    fails(capsys, ["--model_name_or_path", "m", "--train_file", "data.txt"], "train_file", "data.txt", ".parquet")


def test_no_labeled_data(capsys):
    fails(capsys, ["--model_name_or_path", "m"], "--dataset_name", "--train_file")


def test_unknown_columns_are_named_with_the_existing_ones(capsys, train_file):
    base = ["--model_name_or_path", "m", "--train_file", train_file]
    fails(capsys, [*base, "--text_column", "review"], "'review'", "--text_column", "['text', 'label']")
    fails(capsys, [*base, "--label_column", "sentiment"], "'sentiment'", "--label_column", "['text', 'label']")


def test_more_labels_per_class_than_a_class_has(capsys, train_file):
    error = fails(
        capsys, ["--model_name_or_path", "m", "--train_file", train_file, "--num_labeled_per_class", "1000"],
        "num_labeled_per_class", "1000",
    )  # fmt: skip
    assert "rows" in error


def test_rounds_without_unlabeled_data(capsys, train_file):
    fails(capsys, ["--model_name_or_path", "m", "--train_file", train_file], "self_training_rounds", "unlabeled")


def test_missing_model(capsys, tmp_path, train_file):
    missing = str(tmp_path / "no-model")
    fails(
        capsys,
        ["--model_name_or_path", missing, "--train_file", train_file, "--num_labeled_per_class", "2"],
        "--model_name_or_path",
        missing,
    )


def test_bad_option_values(capsys, train_file):
    base = ["--model_name_or_path", "m", "--train_file", train_file]
    fails(capsys, [*base, "--confidence_threshold", "1.5"], "confidence_threshold", "1.5")
    fails(capsys, [*base, "--num_labeled_per_class", "0"], "num_labeled_per_class", "0")
    fails(capsys, [*base, "--max_seq_length", "1"], "max_seq_length", "1")
    fails(capsys, [*base, "--model_init_kwargs", '{"num_labels": 3}'], "model_init_kwargs", "num_labels")
    fails(capsys, [*base, "--model_init_kwargs", '{"dtype": float32}'], "model_init_kwargs", "not valid JSON")
    fails(capsys, [*base, "--lora_r", "8"], "`lora_r`=8", "use_peft")  # would train the whole model, silently
    fails(capsys, [*base, "--use_peft", "--lora_r", "0"], "lora_r", "0")
    fails(capsys, [*base, "--use_peft", "--lora_dropout", "1.0"], "lora_dropout", "1.0")


def test_model_init_kwargs_the_model_cannot_take(capsys, tmp_path, train_file):
    make_model().save_pretrained(str(tmp_path / "tiny"))
    make_tokenizer(str(tmp_path)).save_pretrained(str(tmp_path / "tiny"))
    base = ["--model_name_or_path", str(tmp_path / "tiny"), "--train_file", train_file, "--num_labeled_per_class", "2"]
    fails(capsys, [*base, "--model_init_kwargs", '{"revison": "v1"}'], "--model_init_kwargs", "revison")
    fails(capsys, [*base, "--model_init_kwargs", '{"dtype": "float17"}'], "--model_init_kwargs", "float17")


def test_unreadable_config_files(capsys, tmp_path, train_file):
    missing = str(tmp_path / "missing.yaml")
    fails(capsys, ["--config", missing], "--config", missing, "does not exist")

    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: [1e-4\nseed: 3\n")
    fails(capsys, ["--config", str(broken)], "--config", str(broken), "not valid YAML")

    listed = tmp_path / "list.yaml"
    listed.write_text("- learning_rate\n- seed\n")
    fails(capsys, ["--config", str(listed)], str(listed), "list")

    typo = tmp_path / "typo.yaml"
    typo.write_text(f"train_file: {train_file}\nlearning_rat: 0.1\n")
    fails(capsys, ["--config", str(typo)], "'learning_rat'", "'learning_rate'")

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    fails(capsys, ["--config", str(binary)], str(binary), "cannot be read")

    fails(capsys, ["--config", str(tmp_path)], str(tmp_path), "cannot be read")


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--no_such_option", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no_such_option" in err[0] and "--help" in err[0]

    with pytest.raises(SystemExit) as exit_:
        main(["tain"])
    assert exit_.value.code == 2
    assert "tain" in capsys.readouterr().err


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A saved 2-class classifier with placeholder class names (`LABEL_0`, `LABEL_1`) and its tokenizer."""
    path = str(tmp_path / "tiny")
    make_model().save_pretrained(path)
    make_tokenizer(str(tmp_path)).save_pretrained(path)
    return path


def write_labeled(path, labels, suffix=".csv"):
    """A labeled file with one toy text per label in `labels` (`None` leaves the label empty)."""
    texts = toy_rows(len(labels), seed=3)["text"]
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    else:
        path.write_text("text,label\n" + "".join(f"{t},{'' if y is None else y}\n" for t, y in zip(texts, labels)))
    return str(path)


def test_labels_that_cannot_train_a_classifier(capsys, tmp_path, tiny_model_dir):
    base = ["--model_name_or_path", tiny_model_dir, "--self_training_rounds", "0", "--train_file"]
    one_class = write_labeled(tmp_path / "one.csv", ["positive"] * 6)
    fails(capsys, [*base, one_class], "one class ('positive')", "at least 2 classes")

    # A row without a label is named as such, not blamed on a valid row (names: the class list skips it; ints: the
    # column reads as floats).
    names = ["negative", "positive", "negative", None, "positive", "negative"]
    names_file = write_labeled(tmp_path / "names.csv", names)
    fails(
        capsys,
        [*base, names_file],
        "no label (empty, None or -1) in row 3:",
        "'label'",
        f"(`train_dataset`, from `--train_file` {names_file!r})",  # the file the user gave, not only the argument
    )
    ints = [0, 1, 0, 1, None, 1]
    fails(
        capsys,
        [*base, write_labeled(tmp_path / "ints.csv", ints)],
        "no label (empty, None or -1) in row 4:",
        "'label'",
    )

    mixed = write_labeled(tmp_path / "mixed.jsonl", ["negative", 1, "negative", "positive"], suffix=".jsonl")
    fails(capsys, [*base, mixed], "'label' mixes class names and other values", "'negative'", "1")


def test_label_errors_name_the_file(capsys, tmp_path, tiny_model_dir):
    train = write_labeled(tmp_path / "train.csv", ["negative", "positive"] * 4)
    odd = write_labeled(tmp_path / "odd.csv", ["negative", "neutral", "positive"])
    base = ["--model_name_or_path", tiny_model_dir, "--train_file", train, "--self_training_rounds", "0"]
    fails(
        capsys,
        [*base, "--validation_file", odd],
        "label 'neutral' at row 1",
        f"(`eval_dataset`, from `--validation_file` {odd!r})",
    )
    # The test set, read beside a validation set, is checked by the command itself.
    fails(
        capsys,
        [*base, "--validation_file", train, "--test_file", odd],
        f"test set (`--test_file` {odd!r})",
        "label 'neutral' at row 1",
    )


def test_warnings_name_the_file(caplog, tmp_path, tiny_model_dir):
    train = write_labeled(tmp_path / "train.csv", ["negative", "positive"] * 4)
    numbered = write_labeled(tmp_path / "numbered.csv", [0, 1, 1])  # ids beside the train file's names: a warning
    argv = ["--model_name_or_path", tiny_model_dir, "--train_file", train, "--validation_file", numbered]
    argv += ["--self_training_rounds", "0", "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    filters = [list(handler.filters) for handler in logging.getLogger().handlers]
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        build_trainer(*parse_train_args(make_train_parser(), argv))
    named = f"(`eval_dataset`, from `--validation_file` {numbered!r})'s label column 'label' holds class ids"
    assert named in caplog.text
    # Only while the trainer is built: the logging set-up is left as it was.
    assert [list(handler.filters) for handler in logging.getLogger().handlers] == filters


def test_checkpoint_head_of_another_size(capsys, tmp_path, tiny_model_dir):
    three = write_labeled(tmp_path / "three.csv", ["negative", "neutral", "positive"] * 2)
    argv = ["--model_name_or_path", tiny_model_dir, "--train_file", three, "--self_training_rounds", "0"]
    fails(capsys, argv, repr(tiny_model_dir), "3 classes", "ignore_mismatched_sizes")

    from hf_semisup.arguments import ModelArguments
    from hf_semisup.cli import load_model
    from hf_semisup.loading import read_data_file

    config = tiny_config(tmp_path, model_init_kwargs={"ignore_mismatched_sizes": True})
    _, model = load_model(
        ModelArguments(model_name_or_path=tiny_model_dir), read_data_file(three, "train_file"), config
    )
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert model.classifier.out_features == 3


def test_local_paths_are_named_with_their_flag(capsys, tmp_path, tiny_model_dir, train_file):
    base = ["--train_file", train_file, "--num_labeled_per_class", "2"]
    missing = str(tmp_path / "no-model")
    fails(capsys, [*base, "--model_name_or_path", missing], "--model_name_or_path", missing, "does not exist")
    fails(capsys, [*base, "--model_name_or_path", "./no-model"], "--model_name_or_path", "'./no-model'", "not exist")

    no_tokenizer = str(tmp_path / "no-tokenizer")
    argv = [*base, "--model_name_or_path", tiny_model_dir, "--tokenizer_name", no_tokenizer]
    fails(capsys, argv, "--tokenizer_name", no_tokenizer, "does not exist")

    empty = tmp_path / "empty"
    empty.mkdir()
    fails(capsys, [*base, "--model_name_or_path", str(empty)], "--model_name_or_path", str(empty), "could not be")


def test_output_dir_that_is_a_file(capsys, tmp_path, train_file):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    code = main(["train", "--model_name_or_path", "m", "--train_file", train_file, "--output_dir", str(a_file)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "`output_dir`" in err and str(a_file) in err and "is a file" in err


def test_nothing_to_resume(capsys, tmp_path, train_file):
    base = ["--model_name_or_path", "m", "--train_file", train_file, "--num_labeled_per_class", "2"]
    empty = str(tmp_path / "fresh")
    argv = [*base, "--output_dir", empty, "--resume_from_checkpoint", "true"]
    code = main(["train", *argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "--resume_from_checkpoint" in err and "nothing to resume" in err and empty in err
    missing = str(tmp_path / "no-checkpoint")
    fails(capsys, [*base, "--resume_from_checkpoint", missing], "--resume_from_checkpoint", missing, "not a folder")


def test_lora_target_modules_the_model_does_not_have(capsys, tmp_path, tiny_model_dir, train_file):
    argv = ["--model_name_or_path", tiny_model_dir, "--train_file", train_file, "--num_labeled_per_class", "4"]
    argv += ["--use_cpu", "--report_to", "none", "--use_peft", "--lora_target_modules", "q_proj", "v_proj"]
    fails(capsys, argv, "`--lora_target_modules`=['q_proj', 'v_proj']", "'query'", "'value'")
