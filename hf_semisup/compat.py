"""Workarounds for what `transformers` does not let a subclass configure; each names the version it was written for."""

import contextlib

import transformers.trainer as trainer_module


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
