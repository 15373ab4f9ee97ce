"""
What [`SemiSupervisedTrainer`] makes of its arguments before `Trainer.__init__`: the config, the model when given by
name, the consistency weight when unset, and the datasets, tokenized, label-mapped and checked once.
"""

import dataclasses
import os

import datasets
import numpy as np
import transformers
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, set_seed

from .adapters import is_peft_model
from .config import DEFAULT_CONSISTENCY_WEIGHT, SemiSupervisedConfig
from .data import (
    check_dataset_types,
    check_every_class_labeled,
    drop_labeled_duplicates,
    label_names_of,
    prepare_dataset,
    prepare_stream,
    warn_on_unknown_tokens,
)
from .metrics import is_offline
from .modeling import align_label_names, check_local_path, file_location_kwargs, head_label_kwargs, load_classifier
from .outputs import cache_dir


def resolve_args(args, model) -> SemiSupervisedConfig:
    """`args` as a [`SemiSupervisedConfig`]: a default one for `None`, a plain `TrainingArguments` converted."""
    if args is None:
        name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
        return SemiSupervisedConfig(output_dir=f"{os.path.basename(str(name).rstrip('/')) or 'model'}-semisup")
    if not isinstance(args, SemiSupervisedConfig):
        fields = SemiSupervisedConfig.__dataclass_fields__
        values = {k: v for k, v in args.to_dict().items() if k in fields and fields[k].init}
        values.pop("push_to_hub_token", None)
        return SemiSupervisedConfig(**values)
    return args


def is_plain_run(args, unlabeled_dataset) -> bool:
    """No rounds, no pool and no consistency loss asked for: the trainer takes and does what `Trainer` does."""
    return args.self_training_rounds == 0 and unlabeled_dataset is None and not args.consistency_weight


def check_self_training_inputs(model, model_init, train_dataset, eval_dataset, unlabeled_dataset):
    """What self-training needs of the trainer's arguments: a labeled `datasets.Dataset`, and a model (not a factory)."""
    if train_dataset is None:
        raise ValueError("`train_dataset` (the labeled set) is required.")
    check_dataset_types(train_dataset=train_dataset, eval_dataset=eval_dataset, unlabeled_dataset=unlabeled_dataset)
    if model is None and model_init is not None:
        raise ValueError(
            "`model_init` makes `Trainer.train` build a new model at each call, and each self-training round is one: "
            "pass the model instead (`model=model_init()`)."
        )


def default_consistency_weight(unlabeled_dataset, tokenizer, compute_loss_func, num_labels: int) -> float:
    """`consistency_weight` when unset: on wherever the pool and the trainer allow it (see `SemiSupervisedConfig`).
    The consistency sampler reshuffles a `Dataset` (not a stream), token dropout needs a tokenizer that can pad, the
    consistency loss computes the supervised loss itself, and a regression head has no distribution to keep."""
    allowed = (
        isinstance(unlabeled_dataset, datasets.Dataset)
        and len(unlabeled_dataset) > 0
        and getattr(tokenizer, "pad_token_id", None) is not None
        and compute_loss_func is None
        and num_labels >= 2
    )
    return DEFAULT_CONSISTENCY_WEIGHT if allowed else 0.0


def prepare_kwargs(args, tokenizer, model_config) -> dict:
    """What `prepare_dataset` needs from the trainer: the tokenizer, the columns, the model's classes, the length."""
    if model_config is None:
        raise ValueError(
            "Raw-text datasets are tokenized and their labels mapped to the model's classes: that needs a model with a "
            "`config` (`num_labels`, `label2id`). Pass tokenized datasets with integer `labels`, or such a model."
        )
    return dict(
        tokenizer=tokenizer,
        text_column=args.text_column,
        label_column=args.label_column,
        label2id=model_config.label2id,
        num_labels=model_config.num_labels,
        max_length=args.max_length,
        num_proc=getattr(args, "dataset_num_proc", None),
    )


def prepare_unlabeled(unlabeled_dataset, prepare: dict, args):
    name = "unlabeled set (`unlabeled_dataset`)"
    if isinstance(unlabeled_dataset, datasets.IterableDataset):
        stream_args = {k: prepare[k] for k in ("text_column", "max_length")}
        return prepare_stream(unlabeled_dataset, prepare["tokenizer"], name=name, **stream_args), None
    if unlabeled_dataset is None or (
        args.self_training_rounds == 0 and args.consistency_weight == 0 and not len(unlabeled_dataset)
    ):
        return None, None
    return prepare_dataset(
        unlabeled_dataset, name=name, labels="hide", add_length=True, cache_dir=cache_dir(args.output_dir), **prepare
    )


def prepare_eval(eval_dataset, prepare: dict, key: str | None = None):
    name = f"eval set {key!r} (`eval_dataset`)" if key is not None else "eval set (`eval_dataset`)"
    return prepare_dataset(eval_dataset, name=name, **prepare)[0]


def _needs(prepare: dict | None) -> dict:
    return prepare if prepare is not None else prepare_kwargs(None, None, None)  # raises: no classes to map to


def class_names(model_config) -> list[str]:
    """The model's class names in id order (none for a model without a config of classes)."""
    id2label = getattr(model_config, "id2label", None) or {}
    return [str(id2label[i]) for i in range(len(id2label))]


def class_prior(labeled, num_labels: int) -> np.ndarray | None:
    """The labeled set's class shares, when it is a prepared `datasets.Dataset` with integer `labels`."""
    if not num_labels or not isinstance(labeled, datasets.Dataset) or "labels" not in labeled.column_names:
        return None
    labels = np.asarray(labeled["labels"])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return None
    counts = np.bincount(labels, minlength=num_labels)
    return counts / counts.sum()


def is_sequence_classifier(model) -> bool:
    """A `...ForSequenceClassification` model (a PEFT one too), whose loss is its own batch mean."""
    if is_peft_model(model):
        model = model.get_base_model()
    return type(model).__name__.endswith("ForSequenceClassification")


def resolve_model(model, processing_class, model_init, args, train_dataset):
    """
    `(model, processing_class, shown)`: the model and tokenizer loaded when `model` is a name or path, and the model
    whose config the run reads (`model_init()`'s when only that is given), its label names aligned with the labeled
    set's.
    """
    if isinstance(model, str):
        check_local_path(model, "`model`")
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model, **file_location_kwargs(args.model_init_kwargs))
    labeled = isinstance(train_dataset, datasets.Dataset) and args.label_column in train_dataset.column_names
    label_names = label_names_of(train_dataset, args.label_column) if labeled else None
    if isinstance(model, str):
        model = load_model(model, args, train_dataset)
    if model is None and model_init is None:
        raise ValueError("`model` is required (a model, or a name or path to load).")
    shown = model if model is not None else model_init()
    if getattr(shown, "config", None) is not None:
        align_label_names(shown.config, label_names)
    return model, processing_class, shown


def load_model(name: str, args: SemiSupervisedConfig, train_dataset) -> PreTrainedModel:
    """The classifier `name` names, its new head sized and named after the labeled set's classes."""
    set_seed(args.seed)  # the new classification head must not depend on the caller's RNG state
    config = AutoConfig.from_pretrained(name, **file_location_kwargs(args.model_init_kwargs))
    label_kwargs = head_label_kwargs(config, train_dataset, args.label_column)
    init_kwargs = dict(args.model_init_kwargs or {})
    hub_kernels_by_default = int(transformers.__version__.split(".")[0]) >= 5
    if hub_kernels_by_default and (args.use_hub_kernels is False or (args.use_hub_kernels is None and is_offline())):
        init_kwargs.setdefault("use_kernels", False)  # loading onto CUDA kernelizes already: no fetch offline
    return load_classifier(name, init_kwargs, **label_kwargs)


@dataclasses.dataclass
class PreparedData:
    """The datasets as the trainer uses them (see [`prepare_datasets`])."""

    labeled: datasets.Dataset
    eval: datasets.Dataset | dict | None
    unlabeled_source: object  # the pool as given, duplicates of labeled texts dropped
    unlabeled: object  # tokenized
    unlabeled_gold_labels: np.ndarray | None  # the pool's hidden labels, for diagnostics only


def is_ours_to_prepare(dataset, args) -> bool:
    """
    Whether a dataset of a plain run (no self-training, no pool) is tokenized and label-mapped here: a
    `datasets.Dataset` of raw text (`args.text_column`), or tokenized with `args.label_column` (class names to map).
    Anything else goes to `Trainer` as given, as `Trainer` takes it.
    """
    if not isinstance(dataset, datasets.Dataset):
        return False
    columns = dataset.column_names
    return args.label_column in columns if "input_ids" in columns else args.text_column in columns


def prepare_datasets(
    args, tokenizer, model_config, train_dataset, eval_dataset, unlabeled_dataset, plain: bool = False
) -> PreparedData:
    """
    Tokenize and label-map every dataset (the main process first: the others reuse its cache), check that every class
    has a labeled example, and drop from the pool the rows that repeat a labeled text. In a `plain` run (no
    self-training, no pool), only the datasets [`is_ours_to_prepare`] are prepared; the others are left as given.
    """
    prepare = None if model_config is None else prepare_kwargs(args, tokenizer, model_config)
    with args.main_process_first(desc="dataset preparation"):
        labeled = train_dataset
        if not plain or is_ours_to_prepare(train_dataset, args):
            labeled, _ = prepare_dataset(train_dataset, name="labeled set (`train_dataset`)", **_needs(prepare))
            check_every_class_labeled(labeled["labels"], model_config.id2label, "labeled set")
            warn_on_unknown_tokens(labeled, tokenizer, "labeled set")
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                key: prepare_eval(value, _needs(prepare), key)
                if not plain or is_ours_to_prepare(value, args)
                else value
                for key, value in eval_dataset.items()
            }
        elif eval_dataset is not None and (not plain or is_ours_to_prepare(eval_dataset, args)):
            eval_dataset = prepare_eval(eval_dataset, _needs(prepare))
        if isinstance(unlabeled_dataset, datasets.Dataset) and len(unlabeled_dataset):
            unlabeled_dataset = drop_labeled_duplicates(train_dataset, unlabeled_dataset, args.text_column)
        unlabeled, gold = prepare_unlabeled(unlabeled_dataset, prepare, args)
    return PreparedData(labeled, eval_dataset, unlabeled_dataset, unlabeled, gold)


def prepare_to_label(args, tokenizer, model_config, dataset):
    """A dataset given to `pseudo_label()`, tokenized as the pool is (a stream lazily, as it is read)."""
    name = "dataset to pseudo-label"
    if isinstance(dataset, datasets.IterableDataset):
        return prepare_stream(dataset, tokenizer, name=name, text_column=args.text_column, max_length=args.max_length)
    prepare = prepare_kwargs(args, tokenizer, model_config)
    with args.main_process_first(desc="tokenizing the dataset to pseudo-label"):
        prepared, _ = prepare_dataset(
            dataset, name=name, labels="hide", add_length=True, cache_dir=cache_dir(args.output_dir), **prepare
        )
    return prepared
