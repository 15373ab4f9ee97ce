"""Workarounds for what `transformers` and `datasets` do not let us configure or do fast; each names its version."""

import contextlib
import logging

import numpy as np
import pyarrow as pa
import transformers.trainer as trainer_module


logger = logging.getLogger(__name__)


class _UploadIgnoring:
    """An `HfApi` whose `upload_folder` also ignores `patterns`."""

    def __init__(self, api, patterns: list[str]):
        self._api, self._patterns = api, patterns

    def __getattr__(self, name):
        return getattr(self._api, name)

    def upload_folder(self, *args, ignore_patterns=None, **kwargs):
        if isinstance(ignore_patterns, str):
            ignore_patterns = [ignore_patterns]
        return self._api.upload_folder(*args, ignore_patterns=[*(ignore_patterns or []), *self._patterns], **kwargs)


@contextlib.contextmanager
def upload_ignoring(patterns: list[str]):
    """
    Make `Trainer.push_to_hub` skip more of `output_dir`. transformers 5.x hard-codes `ignore_patterns=["_*",
    "checkpoint-*"]` and uploads through the module-level `hf_api()`, so that is where the extra patterns go; with a
    transformers that has no `hf_api` this does nothing.
    """
    original = getattr(trainer_module, "hf_api", None)
    if original is None:
        yield
        return
    trainer_module.hf_api = lambda: _UploadIgnoring(original(), patterns)
    try:
        yield
    finally:
        trainer_module.hf_api = original


def guard_hub_kernels(model, use_hub_kernels: bool | None, offline: bool):
    """
    transformers 5 loads a model with Hub kernels (`use_kernels`) when the `kernels` package is installed, and
    kernelizes it at each `train()` / `eval()`: on CUDA that fetches kernels from the Hub, and offline, or with the Hub
    out of reach, it raises there, in the middle of a run. Decide here, before training: with `use_hub_kernels=None`,
    keep them when they can be had (not `offline`, and the kernelization of both modes succeeds now), else use the torch
    layers, with a warning; `True` requires them (a failure is an error now); `False` never uses them.
    """
    from .adapters import is_peft_model

    base = model.get_base_model() if is_peft_model(model) else model
    if not getattr(base, "use_kernels", False):
        return
    if use_hub_kernels is False or (use_hub_kernels is None and offline):
        logger.info("Hub kernels are off (`use_hub_kernels`, or offline): the model runs its torch layers.")
        base.use_kernels = False
        return
    was_training = base.training
    try:
        base.train()
        base.eval()
    except Exception as error:  # the kernels library raises ValueError, OSError or httpx errors when a fetch fails
        if use_hub_kernels:
            raise ValueError(
                f"`use_hub_kernels`=True, but the model's Hub kernels could not be had: {type(error).__name__}: "
                f"{next(iter(str(error).splitlines()), '')}"
            ) from error
        logger.warning(
            f"The model's Hub kernels could not be had ({type(error).__name__}: "
            f"{next(iter(str(error).splitlines()), '')}): it runs its torch layers (`use_hub_kernels=True` would "
            "make this an error)."
        )
        base.use_kernels = False
    finally:
        base.train(was_training)


def take_rows(dataset, columns: list[str], rows: np.ndarray) -> pa.Table:
    """
    Rows `rows` of a `datasets.Dataset` (its indices mapping, if any, applied) as one pyarrow table of `columns`.
    datasets 5.x gathers rows (`dataset.with_format("arrow")[rows]`, `Table.fast_gather`) one single-row slice per row,
    then concatenates them: six times what pyarrow's own `take` costs for a batch of a labeling pass, and a table of
    one chunk per row after it. This reads the backing table (`Dataset.data`) and the indices mapping, and takes.
    """
    table = dataset.data.table.select(columns)
    indices = getattr(dataset, "_indices", None)
    if indices is not None:
        rows = indices.column(0).take(pa.array(rows))
    return table.take(rows if isinstance(rows, pa.Array) else pa.array(rows))
