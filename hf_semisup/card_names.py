"""
What the model card calls the base model, its adapter and the data sets: Hub ids (linked) where they are known, else
what a local folder or file says it is.
"""

import json
import os
from pathlib import Path

import datasets
from huggingface_hub import ModelCard
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .adapters import is_peft_model
from .outputs import CARD_NAME


# Builders named after a file format, not a dataset: such a dataset has no Hub id to cite.
FILE_BUILDERS = {"csv", "json", "parquet", "text", "pandas", "arrow", "generator", "sql", "webdataset"}


def base_model_name(model) -> str:
    if is_peft_model(model):
        name = model.active_peft_config.base_model_name_or_path
        return name or getattr(model.get_base_model().config, "_name_or_path", "") or ""
    return getattr(model.config, "_name_or_path", "") or ""


def base_model_display(base_model_id: str | None, base_name: str, model) -> str:
    if base_model_id:
        return f"[{base_model_id}](https://huggingface.co/{base_model_id})"
    if base_name:
        return f"`{Path(base_name).name}` (a local checkpoint)"
    base = model.get_base_model() if is_peft_model(model) else model
    return f"a `{type(base).__name__}` built in memory"


def describe_adapter(model, peft_type: str) -> str:
    config = model.active_peft_config
    details = []
    if getattr(config, "r", None) is not None:
        details.append(f"r={config.r}")
    if getattr(config, "lora_alpha", None) is not None:
        details.append(f"alpha={config.lora_alpha}")
    targets = getattr(config, "target_modules", None)
    if isinstance(targets, (set, list, tuple)):
        details.append("on " + ", ".join(f"`{t}`" for t in sorted(targets)))
    trainable, total = model.get_nb_trainable_parameters()
    return (
        f"{peft_type}{' (' + ', '.join(details) + ')' if details else ''}; {trainable:,} of {total:,} parameters "
        f"({100 * trainable / total:.2f}%) train, classification head included"
    )


def local_model_names(folder: str) -> tuple[str | None, str | None]:
    """
    What a model folder says it is: `(name, hub_id)`. The name comes from its card (`README.md`: `model_name`, the
    model-index name or the title), else from its config's `_name_or_path` (which transformers 4 wrote); that is a Hub
    id (`org/name`) only when the card names no other model: a fine-tuned model's config can name what it was
    fine-tuned from.
    """
    name = None
    card_path = os.path.join(folder, CARD_NAME)
    if os.path.isfile(card_path):
        card = ModelCard.load(card_path, ignore_metadata_errors=True)
        name = getattr(card.data, "model_name", None)
        if not name:
            titles = [line[2:].strip() for line in card.text.splitlines() if line.startswith("# ")]
            name = titles[0] if titles else None
    config_name = None
    config_path = os.path.join(folder, "config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config_name = json.load(f).get("_name_or_path") or None
    hub_id = as_hub_id(config_name) if config_name and "/" in config_name else None
    if hub_id is not None and name is not None and name != hub_id.split("/")[-1]:
        hub_id = None
    return name or (hub_id.split("/")[-1] if hub_id else None), hub_id


def as_hub_id(name: str | None) -> str | None:
    """`name` if it can be a Hub model id, `None` for an empty name or a local path."""
    if not name or os.path.isdir(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def dataset_id(data) -> str | None:
    info = getattr(data, "info", None)
    name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    return name if name and name not in FILE_BUILDERS else None


def dataset_name(data) -> str:
    hub_id = dataset_id(data)
    if hub_id:
        return f"[{hub_id}](https://huggingface.co/datasets/{hub_id})"
    if not isinstance(data, datasets.Dataset):
        return f"a `{type(data).__name__}`"
    builder = getattr(getattr(data, "info", None), "builder_name", None)
    return f"local `{builder}` files" if builder else "in-memory `Dataset`"
