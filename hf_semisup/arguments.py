"""The data and model arguments of `hf-semisup train`, parsed with `HfArgumentParser` beside `SemiSupervisedConfig`."""

import os
from dataclasses import dataclass, field, fields

from .loading import FILE_BUILDERS, FILE_FLAGS


@dataclass
class DataArguments:
    r"""
    Where the labeled, unlabeled and evaluation data come from, and how the labeled set is sampled.

    The text and label columns are [`SemiSupervisedConfig`]'s `text_column` and `label_column`.

    Parameters:
        dataset_name (`str` or `None`, *optional*, defaults to `None`):
            A Hub dataset (or a local dataset folder) read with `datasets.load_dataset(dataset_name,
            dataset_config_name)`. Its `train`, `validation` and `test` splits are used when present.
        dataset_config_name (`str` or `None`, *optional*, defaults to `None`):
            The configuration of `dataset_name`, e.g. `"sst2"` for `"nyu-mll/glue"`.
        unlabeled_split_name (`str` or `None`, *optional*, defaults to `None`):
            A split of `dataset_name` to use as the unlabeled pool, e.g. `"unsupervised"` for IMDb.
        train_file (`str` or `None`, *optional*, defaults to `None`):
            The labeled set: a csv, tsv, json, jsonl or parquet file. Replaces the `train` split of `dataset_name`.
        unlabeled_file (`str` or `None`, *optional*, defaults to `None`):
            The unlabeled pool. A label column in it is never trained on; it only measures pseudo-label accuracy.
        validation_file (`str` or `None`, *optional*, defaults to `None`):
            Evaluated after every round (and used by `load_best_model_at_end`).
        test_file (`str` or `None`, *optional*, defaults to `None`):
            Evaluated after training. Without a validation set it is also evaluated after every round, for the summary
            only: it never selects a model.
        num_labeled_per_class (`int` or `None`, *optional*, defaults to `None`):
            Keep this many labeled rows per class of the labeled set, drawn with `label_sampling_seed`, and move the
            others to the unlabeled pool with their labels hidden (kept only for the pseudo-label accuracy
            diagnostic). Simulates a low-resource task on a fully labeled dataset.
        label_sampling_seed (`int`, *optional*, defaults to `0`):
            Seed of the `num_labeled_per_class` draw and of the `max_unlabeled_samples` subset, independent of the
            training `seed` so the same labeled set can be trained with several seeds.
        max_unlabeled_samples (`int` or `None`, *optional*, defaults to `None`):
            Keep a random subset of this many rows of the unlabeled pool (drawn with `label_sampling_seed`).
        max_seq_length (`int` or `None`, *optional*, defaults to `None`):
            Truncate texts to this many tokens. Sets `SemiSupervisedConfig.max_length` when given.
    """

    _argument_group_name = "data arguments"  # a heading of `hf-semisup train --help`

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset (or local dataset folder) read with datasets.load_dataset. Its train, "
            "validation and test splits are used when present."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration of --dataset_name, e.g. 'sst2' for 'nyu-mll/glue'."}
    )
    unlabeled_split_name: str | None = field(
        default=None,
        metadata={"help": "A split of --dataset_name to use as the unlabeled pool, e.g. 'unsupervised' for IMDb."},
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "The labeled set: a csv, tsv, json, jsonl or parquet file (replaces the dataset's train split)."
        },
    )
    unlabeled_file: str | None = field(
        default=None,
        metadata={
            "help": "The unlabeled pool (csv, tsv, json, jsonl or parquet). A label column in it is never "
            "trained on; it only measures pseudo-label accuracy."
        },
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Evaluated after every round (and used by --load_best_model_at_end)."},
    )
    test_file: str | None = field(
        default=None,
        metadata={
            "help": "Evaluated after training; without a validation set also after every round, for the "
            "summary only (it never selects a model)."
        },
    )
    num_labeled_per_class: int | None = field(
        default=None,
        metadata={
            "help": "Keep this many labeled rows per class (drawn with --label_sampling_seed) and move the "
            "rest to the unlabeled pool, labels hidden from training and kept for diagnostics."
        },
    )
    label_sampling_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the --num_labeled_per_class draw and the --max_unlabeled_samples subset "
            "(independent of the training --seed)."
        },
    )
    max_unlabeled_samples: int | None = field(
        default=None,
        metadata={"help": "Keep a random subset of this many unlabeled rows (drawn with --label_sampling_seed)."},
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Truncate texts to this many tokens (sets the config's --max_length when given)."},
    )

    def __post_init__(self):
        if self.dataset_name is None and self.train_file is None:
            raise ValueError("Give a labeled set: `--dataset_name` (a Hub dataset) or `--train_file` (a local file).")
        if self.dataset_name is None and self.unlabeled_split_name is not None:
            raise ValueError(
                f"`unlabeled_split_name`={self.unlabeled_split_name!r} needs `dataset_name` (the dataset it is a "
                "split of)."
            )
        for name in FILE_FLAGS.values():
            path = getattr(self, name)
            if path is not None and os.path.splitext(path)[1].lower() not in FILE_BUILDERS:
                raise ValueError(
                    f"`{name}`={path!r} has an unsupported extension; use one of {', '.join(FILE_BUILDERS)}."
                )
        for name, minimum in (("num_labeled_per_class", 1), ("max_unlabeled_samples", 1), ("max_seq_length", 2)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
                raise ValueError(f"`{name}` must be None or an integer >= {minimum}, got {value!r}.")


@dataclass
class ModelArguments:
    r"""
    The pretrained model to fine-tune.

    Parameters:
        model_name_or_path (`str`):
            A Hub model id or a local folder, loaded with `AutoModelForSequenceClassification.from_pretrained`. A
            new classification head gets one output per class of the labeled set, named after its classes.
        tokenizer_name (`str` or `None`, *optional*, defaults to `None`):
            The tokenizer, when it is not the one saved with the model.
        model_revision (`str`, *optional*, defaults to `"main"`):
            The branch, tag or commit of the model (and tokenizer) on the Hub.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow running modeling code from the model's Hub repository. Only enable it for repositories you trust.
        cache_dir (`str` or `None`, *optional*, defaults to `None`):
            Where downloaded models and datasets are cached (default: the Hugging Face cache).
        use_peft (`bool`, *optional*, defaults to `False`):
            Train a LoRA adapter and the classification head instead of the whole model (see [`get_peft_config`]);
            the base model stays frozen. `save_model` writes the adapter, or the merged model with
            `--save_merged_model`.
        lora_r (`int`, *optional*, defaults to `16`):
            The rank of the LoRA update matrices.
        lora_alpha (`int`, *optional*, defaults to `32`):
            LoRA's scaling numerator: the update is scaled by `lora_alpha / lora_r`.
        lora_dropout (`float`, *optional*, defaults to `0.05`):
            Dropout on the LoRA layers' input.
        lora_target_modules (`list[str]` or `None`, *optional*, defaults to `None`):
            The modules to adapt (e.g. `query value`); `None` lets peft choose its default for the architecture.
        lora_modules_to_save (`list[str]` or `None`, *optional*, defaults to `None`):
            More modules to train in full beside the adapter (the classification head always trains).
    """

    _argument_group_name = "model arguments"

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Required: a Hub model id or a local folder, loaded with "
            "AutoModelForSequenceClassification.from_pretrained (a new head is sized and named after the "
            "labeled set's classes)."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "The tokenizer, when it is not the one saved with the model."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "The branch, tag or commit of the model (and tokenizer) on the Hub."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow running modeling code from the model's Hub repository. Only for repositories you trust."
        },
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded models and datasets are cached (default: the HF cache)."}
    )

    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train a LoRA adapter and the classification head instead of the whole model (the base stays "
            "frozen)."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (with --use_peft)."})
    lora_alpha: int = field(
        default=32, metadata={"help": "LoRA alpha: the update is scaled by lora_alpha / lora_r (with --use_peft)."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA layers (with --use_peft)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "The modules to adapt, e.g. 'query value' (with --use_peft; default: peft's choice for the "
            "architecture)."
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "More modules to train in full beside the adapter; the classification head always trains (with "
            "--use_peft)."
        },
    )

    def __post_init__(self):
        # Not a required dataclass field: argparse would then refuse a value given only in the --config file.
        if not self.model_name_or_path:
            raise ValueError("`model_name_or_path` is required: a Hub model id or a local model folder.")
        for name in ("lora_target_modules", "lora_modules_to_save"):
            if isinstance(getattr(self, name), str):  # a single name written as a YAML scalar, not a list
                setattr(self, name, [getattr(self, name)])
        for name, minimum in (("lora_r", 1), ("lora_alpha", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"`lora_dropout` must be in [0, 1), got {self.lora_dropout!r}.")
        if not self.use_peft:
            defaults = {f.name: f.default for f in fields(self) if f.name.startswith("lora_")}
            changed = [name for name, default in defaults.items() if getattr(self, name) != default]
            if changed:
                raise ValueError(
                    f"`{changed[0]}`={getattr(self, changed[0])!r} applies to a LoRA adapter only: add `use_peft` to "
                    "train one (the whole model trains otherwise)."
                )


def get_peft_config(model_args: ModelArguments):
    """
    The [`~peft.LoraConfig`] that `model_args` asks for (task type `SEQ_CLS`, so peft also trains the classification
    head), or `None` without `use_peft`: what [`SemiSupervisedTrainer`] takes as `peft_config`.
    """
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        task_type="SEQ_CLS",
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        modules_to_save=model_args.lora_modules_to_save,
    )
