"""Offline GPU nodes: Hub kernels (transformers 5 with `kernels` installed) never crash a run in its middle."""

import logging

import pytest
from conftest import make_model, tiny_config, toy_dataset

from hf_semisup import SemiSupervisedTrainer


pytest.importorskip("kernels")
OFFLINE_ERROR = (
    "Version 1 of 'kernels-community/activation' is not available in the local cache and Hugging Face Hub is in "
    "offline mode"
)


@pytest.fixture
def kernelize_fails(monkeypatch):
    """`kernelize` as it fails on CUDA without the Hub: a fetch per kernelization; resetting to torch layers works."""
    import transformers.modeling_utils as modeling_utils

    real, calls = modeling_utils.kernelize, []

    def kernelize(model, mode=None, kernel_config=None, device_map=None):
        if kernel_config is not None:  # `reset_kernels`: an empty mapping, back to the torch layers
            return real(model, mode=mode, kernel_config=kernel_config, device_map=device_map)
        calls.append(mode)
        raise ValueError(OFFLINE_ERROR)

    monkeypatch.setattr(modeling_utils, "kernelize", kernelize)
    return calls


def kernelized_model():
    """A model as transformers 5 loads it with `kernels` installed: `use_kernels` on, kernelized for inference."""
    from kernels import Mode

    model = make_model()
    model._use_kernels, model._kernels_mode = True, Mode.INFERENCE
    return model


def build(tmp_path, tokenizer, **config):
    args = tiny_config(tmp_path, self_training_rounds=1, max_steps=2, **config)
    return SemiSupervisedTrainer(
        kernelized_model(), args, train_dataset=toy_dataset(16), processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(8, seed=1),
    )  # fmt: skip


def test_unfetchable_kernels_fall_back_to_torch_layers_before_training(
    tmp_path, tokenizer, kernelize_fails, caplog, monkeypatch
):
    monkeypatch.setattr("hf_semisup.trainer.is_offline", lambda: False)  # online as far as the flags say, fetch fails
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        trainer = build(tmp_path, tokenizer)
    assert kernelize_fails, "the kernelization must have been tried"
    assert "Hub kernels could not be had (ValueError: Version 1 of 'kernels-community/activation'" in caplog.text
    assert trainer.model.use_kernels is False
    tried = len(kernelize_fails)
    trainer.train()  # mode switches no longer kernelize: no error mid-run
    assert len(kernelize_fails) == tried and len(trainer.self_training_history) == 2


def test_offline_no_fetch_is_tried(tmp_path, tokenizer, kernelize_fails, monkeypatch):
    monkeypatch.setattr("hf_semisup.trainer.is_offline", lambda: True)
    trainer = build(tmp_path, tokenizer)
    trainer.train()
    assert kernelize_fails == [] and trainer.model.use_kernels is False


def test_kernels_asked_for_fail_when_the_trainer_is_built(tmp_path, tokenizer, kernelize_fails, monkeypatch):
    monkeypatch.setattr("hf_semisup.trainer.is_offline", lambda: False)
    with pytest.raises(ValueError, match=r"`use_hub_kernels`=True, but the model's Hub kernels could not be had"):
        build(tmp_path, tokenizer, use_hub_kernels=True)
    tried = len(kernelize_fails)
    never = build(tmp_path, tokenizer, use_hub_kernels=False)
    never.train()
    assert never.model.use_kernels is False and len(kernelize_fails) == tried
