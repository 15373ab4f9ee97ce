"""The model card: what a semi-supervised run did, rendered from the `model_cards/` template into `README.md`."""

import dataclasses
import enum
import os
import platform
from pathlib import Path

import datasets
import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import card_names
from .adapters import is_peft_model
from .inputs import class_prior
from .outputs import CARD_NAME


TEMPLATE_PATH = Path(__file__).parent / "model_cards" / "model_card_template.md"
TAGS = ["hf-semisup", "semi-supervised", "text-classification"]
TASK = {"task_type": "text-classification", "task_name": "Text Classification"}
# Throughput, not quality: left out of the card's tables and of `model-index`.
SPEED_METRICS = {"runtime", "samples_per_second", "steps_per_second", "model_preparation_time", "jit_compilation_time"}
# Fields about where to write, log and push, or how to run, not about how the model was trained.
IGNORED_PREFIXES = (
    "hub_",
    "push_to_hub",
    "logging_",
    "log_",
    "save_",
    "dataloader_",
    "ddp_",
    "trackio_",
    "do_",
    "eval_",
)
IGNORED_FIELDS = {
    "output_dir", "run_name", "project", "report_to", "disable_tqdm", "resume_from_checkpoint", "local_rank",
    "use_cpu", "skip_memory_metrics", "debug", "enable_jit_checkpoint", "restore_callback_states_from_checkpoint",
    "accelerator_config", "per_device_eval_batch_size", "text_column", "label_column",
}  # fmt: skip
PEFT_NAMES = {"LORA": "LoRA", "ADALORA": "AdaLoRA", "IA3": "IA3", "LOHA": "LoHa", "LOKR": "LoKr"}


@dataclasses.dataclass
class ModelCardFacts:
    """
    What the card says about a run besides its config and model: the datasets (set when the trainer is built) and
    the rounds (kept up to date by [`~hf_semisup.callbacks.ModelCardCallback`]).

    Attributes:
        labeled_dataset, unlabeled_dataset: the prepared labeled set and pool (`None` without one).
        eval_datasets (`dict`): the eval sets by name (`None` for a single one).
        default_metrics (`bool`): whether `compute_metrics` is the default (its `f1` is macro-F1).
        history (`list[dict]`): the round records.
        best_round (`int` or `None`): the round kept by `load_best_model_at_end`.
        best_metric (`str` or `None`): the eval metric that chose it.
        eval_split (`str` or `None`): what a single eval set is (`"validation"`, `"test"`), for the card's columns;
            `None`: a Hub dataset's own split, else "Eval".
    """

    labeled_dataset: object = None
    unlabeled_dataset: object = None
    eval_datasets: dict = dataclasses.field(default_factory=dict)
    default_metrics: bool = True
    history: list = dataclasses.field(default_factory=list)
    best_round: int | None = None
    best_metric: str | None = None
    eval_split: str | None = None


def write_model_card(trainer, output_dir: str, **kwargs) -> str:
    """Render the card of `trainer`'s run (see [`build_model_card`]) into `output_dir/README.md`; returns the path."""
    card = build_model_card(trainer, **kwargs)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, CARD_NAME)
    card.save(path)
    return path


def build_model_card(
    trainer,
    language: str | list[str] | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    model_name: str | None = None,
    finetuned_from: str | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
) -> ModelCard:
    """
    The model card of a [`SemiSupervisedTrainer`] run, from its config, model and `model_card_facts`.

    Args:
        language (`str` or `list[str]`, *optional*):
            Language(s) of the training text, for the card's metadata.
        license (`str`, *optional*):
            License of the model, for the card's metadata.
        tags (`str` or `list[str]`, *optional*):
            Tags added to `hf-semisup`, `semi-supervised` and `text-classification` (and `peft` with an adapter).
        model_name (`str`, *optional*):
            Defaults to the last part of `hub_model_id`, else the name of `output_dir`.
        finetuned_from (`str`, *optional*):
            Hub id of the base model. Defaults to the model's `name_or_path` when that is a Hub id (not a local path).
        dataset_tags (`str` or `list[str]`, *optional*):
            Hub ids of the datasets. Defaults to the datasets' own names, unless they were read from local files.
        dataset (`str` or `list[str]`, *optional*):
            Readable names of the datasets. Defaults to `dataset_tags`.
        dataset_args (`str` or `list[str]`, *optional*):
            Dataset configuration names, as passed to `load_dataset`.
    """
    args, facts = trainer.args, trainer.model_card_facts
    model = trainer.accelerator.unwrap_model(trainer.model)
    history = facts.history
    id2label = model.config.id2label
    class_names = [str(id2label[i]) for i in range(len(id2label))]
    dataset_tags, dataset, dataset_args = _as_list(dataset_tags), _as_list(dataset), _as_list(dataset_args)

    # Model
    if model_name is None:
        hub_model_id = trainer.hub_model_id or args.hub_model_id
        model_name = hub_model_id.split("/")[-1] if hub_model_id else Path(args.output_dir).absolute().name
    repo_id = trainer.hub_model_id or args.hub_model_id or model_name
    base_name = card_names.base_model_name(model)
    local_name, local_hub_id = (
        card_names.local_model_names(base_name) if base_name and os.path.isdir(base_name) else (None,) * 2
    )
    base_model_id = finetuned_from or card_names.as_hub_id(base_name) or local_hub_id
    peft_type = peft_description = None
    if is_peft_model(model):
        peft_config = model.active_peft_config
        peft_type = PEFT_NAMES.get(str(peft_config.peft_type.value), str(peft_config.peft_type.value))
        peft_description = card_names.describe_adapter(model, peft_type)
    is_adapter = peft_type is not None and not getattr(args, "save_merged_model", False)

    # Datasets
    eval_sets = {name: data for name, data in facts.eval_datasets.items() if data is not None}
    split = facts.eval_split
    if split is None and list(eval_sets) == [None] and card_names.dataset_id(eval_sets[None]):
        split = getattr(eval_sets[None], "split", None)
    columns = {None: f"{split}" if split else "Eval"}
    datasets_used = [facts.labeled_dataset, facts.unlabeled_dataset, *eval_sets.values()]
    hub_datasets = dataset_tags or list(dict.fromkeys(filter(None, map(card_names.dataset_id, datasets_used))))
    pool = facts.unlabeled_dataset
    num_unlabeled = (len(pool) if hasattr(pool, "__len__") else "a stream of") if pool is not None else 0
    roles = {"Labeled": facts.labeled_dataset, "Unlabeled": facts.unlabeled_dataset}
    roles.update({f"Evaluation ({name})" if name else "Evaluation": data for name, data in eval_sets.items()})
    data_rows = [
        {"role": role, "name": card_names.dataset_name(data), "size": len(data) if hasattr(data, "__len__") else "-"}
        for role, data in roles.items()
        if data is not None
    ]
    prior = class_prior(facts.labeled_dataset, len(class_names))  # `None` for a dataset given to Trainer as is
    labeled_counts = {}
    if prior is not None:
        counts = np.bincount(np.asarray(facts.labeled_dataset["labels"]), minlength=len(class_names))
        labeled_counts = {name: int(count) for name, count in zip(class_names, counts)}

    # Rounds and results
    round_columns, round_rows = _round_table(history, eval_sets, columns)
    final = None
    if history:
        final = history[facts.best_round] if facts.best_round is not None else history[-1]
    final_metrics, eval_results = {}, []
    if final is not None:
        for eval_name, metrics in _eval_metrics(final, eval_sets).items():
            data = eval_sets.get(eval_name)
            for metric, value in metrics.items():
                final_metrics[_column_name(eval_name, metric, columns)] = _format(value)
                if metric != "loss":
                    eval_results.append(
                        _eval_result(facts, eval_name, data, metric, value, dataset_tags, dataset, dataset_args)
                    )

    card_data = ModelCardData(
        language=language,
        license=license,
        library_name="peft" if is_adapter else "transformers",
        base_model=base_model_id,
        datasets=hub_datasets or None,
        metrics=list(dict.fromkeys(result.metric_type for result in eval_results)) or None,
        pipeline_tag="text-classification",
        tags=TAGS + (["peft", peft_type.lower()] if peft_type else []) + _as_list(tags),
        model_name=model_name,
        eval_results=eval_results or None,
    )
    consistency_weight = getattr(args, "consistency_weight", None)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        repo_id=repo_id,
        base_model_id=base_model_id,
        base_model_display=card_names.base_model_display(base_model_id, local_name or base_name, model),
        class_names=class_names,
        id2label=dict(enumerate(class_names)),
        label2id={name: i for i, name in enumerate(class_names)},
        peft_type=peft_type,
        peft_description=peft_description,
        is_adapter=is_adapter,
        is_merged=peft_type is not None and not is_adapter,
        num_labeled=len(facts.labeled_dataset) if hasattr(facts.labeled_dataset, "__len__") else "a stream of",
        num_unlabeled=num_unlabeled,
        data_rows=data_rows,
        labeled_class_counts=labeled_counts,
        self_training_rounds=args.self_training_rounds,
        confidence_threshold=args.confidence_threshold,
        selection_strategy=getattr(args, "selection_strategy", "threshold"),
        entropy_threshold=getattr(args, "entropy_threshold", None),
        # Rules without a confidence threshold record the confidence of the last row they kept.
        threshold_column="Threshold"
        if getattr(args, "selection_strategy", "threshold") in ("threshold", "adaptive")
        else "Lowest confidence kept",
        pseudo_label_fraction=getattr(args, "pseudo_label_fraction", None),
        soft_pseudo_labels=getattr(args, "soft_pseudo_labels", False),
        first_teacher=getattr(args, "first_teacher", "model"),
        first_teacher_choice=_first_teacher_choice(history),
        label_name_template=getattr(args, "label_name_template", None),
        prototype_refinement_steps=getattr(args, "prototype_refinement_steps", 0),
        class_balance=args.class_balance,
        class_balance_prior=getattr(args, "class_balance_prior", "labeled"),
        max_pseudo_labels=args.max_pseudo_labels,
        student_init=args.student_init,
        student_epochs=_student_epochs(args),
        consistency=None
        if consistency_weight is None
        else {
            "weight": consistency_weight,
            "token_dropout": getattr(args, "token_dropout", None),
            "mode": getattr(args, "token_dropout_mode", None),
        },
        round_columns=round_columns,
        round_rows=round_rows,
        final_round=final["round"] if final is not None else None,
        best_metric=facts.best_metric,
        final_metrics=final_metrics,
        hyperparameters=non_default_hyperparameters(args),
        framework_versions=framework_versions(include_peft=peft_type is not None),
        example_text="Replace me by any text you'd like.",
    )


# ---- Run summary ------------------------------------------------------------------------------------------------------
def non_default_hyperparameters(args) -> dict:
    """
    The fields of `args` whose value differs from the class default, except output, logging, Hub and runtime settings.

    Defaults come from the dataclass fields: building a default config instead would re-initialize accelerate's global
    state in the middle of a run. A `None` default is derived in `__post_init__` (e.g. `gradient_checkpointing` becomes
    `False`), so an empty value (`None`, `False`, `""`, `[]`, `{}`) matches it.
    """
    values = args.to_dict()
    changed = {}
    for field in dataclasses.fields(args):
        name = field.name
        if not field.init or name not in values or name in IGNORED_FIELDS or name.startswith(IGNORED_PREFIXES):
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        if isinstance(default, enum.Enum):
            default = default.value
        value = values[name]
        if value == default or (_is_empty(value) and _is_empty(default)):
            continue
        changed[name] = value
    return changed


def framework_versions(include_peft: bool = False) -> dict[str, str]:
    import accelerate
    import huggingface_hub
    import tokenizers
    import torch
    import transformers

    from . import __version__

    versions = {
        "hf-semisup": __version__,
        "Transformers": transformers.__version__,
        "PyTorch": torch.__version__,
        "Datasets": datasets.__version__,
        "Accelerate": accelerate.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "Tokenizers": tokenizers.__version__,
    }
    if include_peft:
        import peft

        versions["PEFT"] = peft.__version__
    versions["Python"] = platform.python_version()
    return versions


def _first_teacher_choice(history: list[dict]) -> dict | None:
    """What `first_teacher="auto"` chose in round 1, on what held-out accuracy, and whether it ended the run."""
    record = next((r for r in history if "first_teacher_choice" in r), None)
    if record is None:
        return None
    evidence = record.get("first_teacher_evidence", {})
    return {
        "choice": record["first_teacher_choice"],
        "accuracies": {name: _format(scores.get("accuracy")) for name, scores in evidence.items()},
        "stopped": record.get("stopped") is not None,
    }


def _round_table(history: list[dict], eval_sets: dict, names: dict | None = None) -> tuple[list[str], list[dict]]:
    """Column names of the per-round eval metrics, and one row of formatted cells per round."""
    columns = {}
    for record in history:
        for eval_name, metrics in _eval_metrics(record, eval_sets).items():
            for metric in metrics:
                columns.setdefault((eval_name, metric), _column_name(eval_name, metric, names))
    rows = []
    for record in history:
        metrics = _eval_metrics(record, eval_sets)
        rows.append(
            {
                "round": record["round"],
                "threshold": _format(record.get("threshold")),
                "num_pseudo_labels": record.get("num_pseudo_labels", 0),
                "histogram": ", ".join(f"{k}: {v}" for k, v in record.get("pseudo_label_class_counts", {}).items()),
                "pseudo_label_accuracy": _format(record.get("pseudo_label_accuracy")),
                "metrics": [_format(metrics.get(name, {}).get(metric)) for name, metric in columns],
            }
        )
    return list(columns.values()), rows


def _eval_metrics(record: dict, eval_sets: dict) -> dict[str | None, dict[str, float]]:
    """The quality metrics of a history record by eval set: `eval_<set>_<metric>` for a dict of eval sets."""
    names = sorted((name for name in eval_sets if name), key=len, reverse=True)
    grouped = {}
    for key, value in record.items():
        if not key.startswith("eval_") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        eval_name, metric = None, key[len("eval_") :]
        for name in names:
            if metric.startswith(f"{name}_"):
                eval_name, metric = name, metric[len(name) + 1 :]
                break
        if metric not in SPEED_METRICS:
            grouped.setdefault(eval_name, {})[metric] = float(value)
    return grouped


def _eval_result(facts, eval_name, data, metric, value, dataset_tags, dataset, dataset_args) -> EvalResult:
    dataset_type = dataset_tags[0] if dataset_tags else card_names.dataset_id(data) or "unknown"
    default_name = eval_name or (dataset_type if dataset_type != "unknown" else "Unknown")
    # Local files load as the `train` split of their builder whatever their role: only a Hub dataset's split says
    # something.
    split = getattr(data, "split", None) if card_names.dataset_id(data) else None
    macro_f1 = metric == "f1" and facts.default_metrics
    return EvalResult(
        **TASK,
        dataset_type=dataset_type,
        dataset_name=dataset[0] if dataset else default_name,
        dataset_config=dataset_args[0] if dataset_args else None,
        dataset_split=str(split) if split is not None else None,
        metric_type=metric,
        metric_name="Macro F1" if macro_f1 else metric.replace("_", " ").capitalize(),
        metric_args={"average": "macro"} if macro_f1 else None,
        metric_value=value,
    )


# ---- Names ------------------------------------------------------------------------------------------------------------
def _student_epochs(args) -> str | None:
    """Each student's epochs, as the card writes them (`"1"`, `"2.5"`), or `None` when `max_steps` sets the length."""
    if args.max_steps > 0 or not hasattr(args, "round_epochs"):
        return None
    return f"{args.round_epochs(1):g}"


def _column_name(eval_name: str | None, metric: str, names: dict | None = None) -> str:
    """`eval_name metric` for a dict of eval sets; a single set by what it is (`names[None]`: a split, or "Eval")."""
    return f"{eval_name} {metric}" if eval_name else f"{(names or {}).get(None, 'Eval')} {metric}"


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _is_empty(value) -> bool:
    return value is None or value is False or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
