"""PEFT students: wrapping a classifier with an adapter, checking what trains, resetting it, and saving it merged."""

import copy
import logging
import os

import torch
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    is_peft_available,
)


logger = logging.getLogger(__name__)

SEQ_CLS = "SEQ_CLS"
# The head modules peft adds to `modules_to_save` itself for task_type SEQ_CLS (even when they are already listed).
PEFT_SEQ_CLS_HEADS = ("classifier", "score")


def is_peft_model(model) -> bool:
    """True when `model` is a [`~peft.PeftModel`]; never imports peft when it is not installed."""
    if not is_peft_available():
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def prepare_peft_model(model, peft_config):
    """
    Wrap `model` with `peft_config`, or check a ready [`~peft.PeftModel`], so that exactly the adapter and the
    classification head train.

    Args:
        model (`torch.nn.Module`):
            A sequence classifier, or a [`~peft.PeftModel`] (then `peft_config` must be `None`).
        peft_config ([`~peft.PeftConfig`] or `None`):
            The adapter configuration. Its `task_type` must be `"SEQ_CLS"` or unset (then it is set to `"SEQ_CLS"`):
            that task type is what makes peft train the classification head (`classifier` or `score`) along with
            the adapter. The other modules of the head (see [`head_module_names`]: DeBERTa's `pooler`, BART's
            `classification_head`) are added to its `modules_to_save`: they are new too, and frozen they would stay
            random. The caller's object is not modified.

    Returns:
        The model to train: `model` itself when there is nothing to wrap.
    """
    if peft_config is None:
        if is_peft_model(model):
            check_peft_trainable(model)
        return model

    if not is_peft_available():
        raise ImportError(
            "`peft_config` was given but the `peft` library is not installed. Install it with `pip install peft`, "
            "or pass `peft_config=None` to fine-tune the full model."
        )
    from peft import PeftConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise ValueError(
            "`model` is already a `PeftModel` and a `peft_config` was also given. Pass either a base model with "
            "`peft_config`, or the `PeftModel` with `peft_config=None`."
        )
    if not isinstance(peft_config, PeftConfig):
        raise ValueError(
            f"`peft_config` must be a `peft.PeftConfig` (e.g. `LoraConfig(task_type='SEQ_CLS')`), got "
            f"{type(peft_config).__name__}: {peft_config!r}."
        )
    if peft_config.task_type not in (None, SEQ_CLS):
        raise ValueError(
            f"`peft_config.task_type` must be 'SEQ_CLS' (sequence classification) or None, got "
            f"{peft_config.task_type!r}."
        )
    # peft extends `modules_to_save` in place: a copy keeps the caller's config reusable for another trainer.
    peft_config = copy.deepcopy(peft_config)
    peft_config.task_type = SEQ_CLS
    listed = [*(peft_config.modules_to_save or []), *PEFT_SEQ_CLS_HEADS]
    head = [name for name in head_module_names(model) if name not in listed]
    if head:
        peft_config.modules_to_save = [*(peft_config.modules_to_save or []), *head]
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as error:
        if not peft_config.target_modules:
            raise
        # peft's own message names neither the modules asked for nor the ones there are.
        linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        reason = str(error).strip().split(". ")[0].rstrip(".")
        raise ValueError(
            f"`peft_config.target_modules`={_listed(peft_config.target_modules)!r} could not be adapted in "
            f"{type(model).__name__} ({reason}); its linear layers are named {sorted(linear)}."
        ) from error
    check_peft_trainable(model)
    return model


def _listed(names):
    """`target_modules` as a message shows it: a set sorted, a regex string (peft takes one) as it is."""
    return names if isinstance(names, str) else sorted(names)


def head_module_names(model) -> list[str]:
    """
    The classifier's top-level modules with weights outside its pretrained body (the `base_model_prefix` module): the
    classification head, which `from_pretrained` initializes anew. `classifier` for BERT, `pre_classifier` and
    `classifier` for DistilBERT, `pooler` and `classifier` for DeBERTa-v2, `score` for decoder models. Empty for a
    model without a `base_model_prefix` body.
    """
    prefix = getattr(model, "base_model_prefix", None)
    if not prefix or not isinstance(getattr(model, prefix, None), torch.nn.Module):
        return []
    return [
        name
        for name, module in model.named_children()
        if name != prefix and next(module.parameters(), None) is not None
    ]


def check_peft_trainable(model):
    """
    Raise a `ValueError` unless some adapter weights and the classification head of a `PeftModel` train; warn about
    head modules that stay frozen.
    """
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    if not trainable:
        raise ValueError(
            "The `PeftModel` has no trainable parameters (an adapter loaded for inference). Load it with "
            "`PeftModel.from_pretrained(base, path, is_trainable=True)`."
        )
    if not any("modules_to_save" in name for name in trainable):
        modules_to_save = getattr(model.active_peft_config, "modules_to_save", None)
        raise ValueError(
            f"The classification head of the `PeftModel` does not train: no module of `modules_to_save`="
            f"{modules_to_save!r} exists in {type(model.get_base_model()).__name__}. Add the name of its head module "
            "to `peft_config.modules_to_save` (peft adds `classifier` and `score` for task_type='SEQ_CLS')."
        )
    base = model.get_base_model()
    frozen = [
        name
        for name in head_module_names(base)
        if not any(parameter.requires_grad for parameter in getattr(base, name).parameters())
    ]
    if frozen:
        logger.warning(
            f"The classification head modules {frozen} of the `PeftModel` do not train: they keep the weights they "
            "were loaded with (random, when the checkpoint had no head). Add them to `peft_config.modules_to_save`, "
            "or pass the base model with a `peft_config` and the trainer adds them."
        )


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the parameters that train: the adapter and head of a PEFT model (the base is frozen)."""
    return {
        name: parameter.detach().to("cpu", copy=True)
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def load_trainable_state(model, state: dict[str, torch.Tensor]):
    """Load a [`trainable_state`] back, checking that every saved tensor found its parameter."""
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"Saved adapter weights match no parameter of the model: {result.unexpected_keys}.")


def save_merged_model(model, output_dir: str, is_main_process: bool = True, tokenizer=None, training_args=None):
    """
    Save a [`~peft.PeftModel`] as a plain `transformers` model with the adapter merged into the base weights, with the
    `tokenizer` and `training_args` (as `Trainer.save_model` writes them) when given.

    The merge runs on a copy, so training can go on with the adapter; the copy holds a second set of weights while
    saving. Adapter files left in `output_dir` by an earlier save are removed, so `from_pretrained(output_dir)` loads
    the merged weights and not an adapter.
    """
    os.makedirs(output_dir, exist_ok=True)
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(output_dir, is_main_process=is_main_process)
    if is_main_process and tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    if is_main_process and training_args is not None:
        torch.save(training_args, os.path.join(output_dir, TRAINING_ARGS_NAME))
    if is_main_process:
        for name in (ADAPTER_CONFIG_NAME, ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME):
            path = os.path.join(output_dir, name)
            if os.path.isfile(path):
                os.remove(path)
    del merged
