"""The label-efficiency benchmark's bookkeeping: stratified draws, the gap-closed column, resumable settings."""

import json
import os
import sys
from unittest import mock

import datasets
import numpy as np
import pytest

from hf_semisup import SemiSupervisedTrainer
from hf_semisup.teachers import TEACHERS


sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import label_efficiency  # noqa: E402


def run(system, accuracy, seed=0, budget=8, rounds=None):
    return {
        "system": system,
        "budget": budget,
        "seed": seed,
        "test": {"accuracy": accuracy, "f1": accuracy - 0.01},
        "seconds": 60.0,
        **({"rounds": rounds} if rounds else {}),
    }


def test_gap_closed_and_pseudo_label_accuracy_columns():
    rounds = [
        {"round": 0, "num_pseudo_labels": 0, "pseudo_label_accuracy": None},
        {"round": 1, "num_pseudo_labels": 100, "pseudo_label_accuracy": 0.8},
    ]
    results = [
        run("supervised", 0.60),
        run("supervised", 0.64, seed=1),
        run("ceiling", 0.82),
        run("ceiling", 0.82, seed=1),
        run("both", 0.70, rounds=rounds),
        run("both", 0.74, seed=1, rounds=rounds),
    ]
    lines = {line.split(" | ")[1]: line for line in label_efficiency.table(results).splitlines()[2:]}
    # (0.72 - 0.62) / (0.82 - 0.62) = 50%
    assert "| 50% |" in lines["both"]
    assert "0.720 +- 0.028" in lines["both"]
    assert "| 0.800 |" in lines["both"] and "| 100 |" in lines["both"]
    assert "| 0% |" in lines["supervised"]
    assert "| - |" in lines["ceiling"].split("0.820")[1]


def test_draw_is_stratified_reproducible_and_disjoint():
    labels = ["negative"] * 300 + ["positive"] * 100
    train = datasets.Dataset.from_dict({"text": [f"text {i}" for i in range(400)], "label": labels})
    args = type("Args", (), {"pool_size": 200, "ceiling_size": 150})()
    split = label_efficiency.draw(train, train, budget=8, seed=3, args=args)
    assert sorted(split.labeled["label"]) == ["negative"] * 8 + ["positive"] * 8
    assert len(split.pool) == 200 and len(split.ceiling) == 150
    assert not set(split.labeled["text"]) & set(split.pool["text"])
    again = label_efficiency.draw(train, train, budget=8, seed=3, args=args)
    assert again.labeled["text"] == split.labeled["text"] and again.pool["text"] == split.pool["text"]
    other = label_efficiency.draw(train, train, budget=8, seed=4, args=args)
    assert other.labeled["text"] != split.labeled["text"]


def test_set_values_are_typed():
    assert label_efficiency.parse_set(["learning_rate=1e-4", "max_steps=120", "class_balance=false", "x=topk"]) == {
        "learning_rate": 1e-4,
        "max_steps": 120,
        "class_balance": False,
        "x": "topk",
    }
    assert np.isclose(label_efficiency.parse_set(["a=.5"])["a"], 0.5)


def test_subjectivity_set_is_balanced_and_split_by_movie():
    import make_subjectivity
    import pandas as pd

    plots = [
        {
            "category": "plot",
            "movie_name": f"m{i}",
            "text": f"Sam Spade meets client number {i} in the city. Short. "
            f"He then follows the trail of clue number {i} to the docks.",
        }
        for i in range(20)
    ]
    reviews = [
        {
            "category": "fresh" if i % 2 else "rotten",
            "movie_name": f"m{i % 20}",
            "text": f"A  truly moving film, take {i}.",
        }
        for i in range(100)
    ]
    train, test = make_subjectivity.build(pd.DataFrame(plots + reviews), test_size=10, seed=0)
    rows = train + test
    # Two plot sentences of 5+ words per summary ("Short." is dropped), and as many review snippets, whitespace tidied.
    assert sum(r["label"] == "objective" for r in rows) == sum(r["label"] == "subjective" for r in rows) == 40
    assert all("  " not in r["text"] and "Short." not in r["text"] for r in rows)
    assert 0 < len(test) <= 10 and set(r["text"] for r in train).isdisjoint(r["text"] for r in test)
    movie_of = {" ".join(r["text"].split()): r["movie_name"] for r in reviews}
    for p in plots:
        movie_of.update({sentence: p["movie_name"] for sentence in make_subjectivity.SENTENCE_END.split(p["text"])})
    train_movies, test_movies = ({movie_of[r["text"]] for r in part} for part in (train, test))
    assert train_movies.isdisjoint(test_movies)


def test_every_system_is_a_valid_config_and_records_real_fields(tmp_path):
    from hf_semisup import SemiSupervisedConfig

    for name, (kind, overrides) in label_efficiency.SYSTEMS.items():
        if kind != "semisup":
            continue
        settings = {k: v for k, v in overrides.items() if k not in ("held_out", "consistency")}
        config = SemiSupervisedConfig(output_dir=str(tmp_path), report_to="none", **settings)
        recorded = {field: getattr(config, field) for field in label_efficiency.RECORDED_FIELDS}
        assert all(recorded[k] == v for k, v in settings.items() if k in recorded), name
    # The earlier defaults the README's older tables measured, kept reproducible by name.
    earlier = label_efficiency.SYSTEMS["fraction-0.2-3-epochs"][1]
    assert (earlier["pseudo_label_fraction"], earlier["student_epochs"]) == (0.2, None)
    assert (
        earlier["prototype_refinement_steps"]
        == label_efficiency.SYSTEMS["no-refinement"][1]["prototype_refinement_steps"]
        == 0
    )
    assert label_efficiency.SYSTEMS["embeddings-threshold"][1]["selection_strategy"] == "threshold"


def test_saved_runs_resume_and_never_mix_settings(tmp_path):
    path = str(tmp_path / "results.json")
    assert label_efficiency.saved_runs(path, {"budgets": [8]}) == []
    with open(path, "w") as f:
        json.dump({"settings": {"budgets": [8, 32], "pool_size": 4000}, "runs": [run("defaults", 0.7)]}, f)
    assert label_efficiency.saved_runs(path, {"budgets": [8, 32], "pool_size": 4000}) == [run("defaults", 0.7)]
    with pytest.raises(SystemExit, match="budgets differ"):
        label_efficiency.saved_runs(path, {"budgets": [8], "pool_size": 4000})
    with open(path, "w") as f:
        json.dump({"runs": [run("defaults", 0.7)]}, f)  # a file without settings is not someone else's to overwrite
    with pytest.raises(SystemExit, match="budgets differ"):
        label_efficiency.saved_runs(path, {"budgets": [8]})


@pytest.mark.parametrize("systems", [label_efficiency.DEFAULT_SYSTEMS, label_efficiency.QUICK_SYSTEMS])
def test_default_system_lists_train_no_configuration_twice(systems, tmp_path):
    """Each semi-supervised system of a default list trains a different config, once the trainer's choice of an unset
    `consistency_weight` is applied (`both` at the default lambda trains as `defaults` does)."""
    from hf_semisup.config import DEFAULT_CONSISTENCY_WEIGHT, SemiSupervisedConfig

    args = type("Args", (), {"consistency_weight": 1.0, "max_length": 128, "seed_offset": 42, "set": {}})()
    configs = []
    for system in systems:
        kind, overrides = label_efficiency.SYSTEMS[system]
        if kind != "semisup":
            continue
        overrides, held_out = label_efficiency.semisup_overrides(overrides, args)
        config = SemiSupervisedConfig(**{**label_efficiency.base_settings(args, str(tmp_path)), **overrides}).to_dict()
        if config["consistency_weight"] is None:
            config["consistency_weight"] = DEFAULT_CONSISTENCY_WEIGHT
        configs.append((config, held_out))
    assert len(configs) >= 3
    assert all(a != b for i, a in enumerate(configs) for b in configs[i + 1 :])
    # What the test guards against: `both` beside `defaults`.
    both, _ = label_efficiency.semisup_overrides(label_efficiency.SYSTEMS["both"][1], args)
    both = SemiSupervisedConfig(**{**label_efficiency.base_settings(args, str(tmp_path)), **both}).to_dict()
    assert (both, False) in configs


def test_frozen_probe_fits_the_rows_it_names_and_scores_the_test_set(tmp_path, tokenizer):
    from conftest import make_model, toy_dataset

    model_path = str(tmp_path / "model")
    make_model().save_pretrained(model_path)
    ceiling, test = toy_dataset(400, seed=1), toy_dataset(200, seed=2)
    # Two labeled rows, one of each class: a logistic regression on them alone is a coin toss beside 400 rows.
    labeled = ceiling.select([ceiling["label"].index("negative"), ceiling["label"].index("positive")])
    split = label_efficiency.Split(labeled, ceiling, ceiling, test)
    args = type("Args", (), {"max_length": 32})()

    many = label_efficiency.run_probe(split, "ceiling", 0, args, model_path, tokenizer)["test"]
    few = label_efficiency.run_probe(split, "labeled", 0, args, model_path, tokenizer)["test"]
    assert many["accuracy"] >= 0.75, many
    assert many["accuracy"] > few["accuracy"] + 0.1, (many, few)
    assert set(many) == {"accuracy", "f1"}


def test_gold_first_teacher_labels_round_1_with_the_given_probabilities(tmp_path, tokenizer):
    from conftest import make_model, tiny_config, toy_dataset

    model_path = str(tmp_path / "model")
    make_model().save_pretrained(model_path)
    pool, labeled = toy_dataset(400, seed=1), toy_dataset(16, seed=3)
    split = label_efficiency.Split(labeled, pool, pool, toy_dataset(10, seed=2))
    args = type("Args", (), {"max_length": 32})()
    # Cross-fitted: each half of the pool is labeled by the regression fitted on the other half's gold labels.
    probabilities = label_efficiency.cross_fitted_probabilities(split, 0, args, model_path, tokenizer)
    assert set(probabilities) == set(pool["text"])
    names = ["negative", "positive"]
    predicted = [names[int(np.argmax(probabilities[t]))] for t in pool["text"]]
    assert np.mean([p == gold for p, gold in zip(predicted, pool["label"])]) >= 0.7

    # Round 1 takes its labels from the given probabilities (here the gold labels themselves), not from prototypes.
    gold = {t: np.eye(2)[names.index(label)] for t, label in zip(pool["text"], pool["label"])}
    with mock.patch.dict(TEACHERS, {"gold": lambda: label_efficiency.GoldFirstTeacher(gold)}):
        config = tiny_config(tmp_path / "run", first_teacher="gold", selection_strategy="topk", max_steps=2)
        trainer = SemiSupervisedTrainer(
            model=make_model(), args=config, train_dataset=labeled, unlabeled_dataset=pool, processing_class=tokenizer
        )
        trainer.train()
    round_1 = trainer.self_training_history[1]
    assert round_1["teacher_pool_accuracy"] == 1.0 and round_1["pseudo_label_accuracy"] == 1.0
    assert trainer.self_training_history[2]["teacher_pool_accuracy"] < 1.0  # later rounds: the student teaches


def test_gap_and_worst_seed_are_measured_from_the_stronger_supervised_baseline():
    results = [
        run("supervised", 0.60),
        run("supervised", 0.70, seed=1),
        run("supervised-standard", 0.66),
        run("supervised-standard", 0.68, seed=1),
        run("ceiling", 0.87),
        run("ceiling", 0.87, seed=1),
        run("defaults", 0.77),
        run("defaults", 0.69, seed=1),
    ]
    lines = {line.split(" | ")[1]: line for line in label_efficiency.table(results).splitlines()[2:]}
    # The stronger baseline's mean is supervised-standard's 0.67 (supervised: 0.65): (0.73 - 0.67) / (0.87 - 0.67).
    assert "| 30% |" in lines["defaults"]
    # Seed 0: 0.77 against max(0.60, 0.66); seed 1: 0.69 against max(0.70, 0.68) is -1 point (F1 alike).
    assert "| -1.0 / -1.0 |" in lines["defaults"]
    assert "| -10% | - |" in lines["supervised"]  # (0.65 - 0.67) / 0.20; no worst-seed figure for a baseline


def test_the_standard_recipe_is_trainers_usual_fine_tuning():
    assert label_efficiency.STANDARD_RECIPE == dict(
        learning_rate=5e-5, per_device_train_batch_size=16, max_steps=100, lr_scheduler_type="linear", warmup_steps=0
    )
    assert label_efficiency.SYSTEMS["supervised-standard"][0] == "supervised-standard"
    assert "supervised-standard" in label_efficiency.DEFAULT_SYSTEMS
