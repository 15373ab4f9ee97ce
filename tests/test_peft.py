"""PEFT students: what trains, what stays frozen, the reset between rounds, saving and reloading, clear errors."""

import logging
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import make_model, make_tokenizer, tiny_config, toy_dataset
from peft import AutoPeftModelForSequenceClassification, LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification, TrainerCallback

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer
from hf_semisup.adapters import trainable_state


class TrainableStateRecorder(TrainerCallback):
    """Copies the trainable (adapter + head) weights at the start and end of every round's training."""

    def __init__(self):
        self.begin, self.end = [], []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin.append(trainable_state(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end.append(trainable_state(model))


def base_name(peft_name: str) -> str:
    """The name a frozen parameter of a LoRA-wrapped classifier has in the unwrapped model."""
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def logits_of(model, tokenizer, texts):
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(list(texts), padding=True, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One LoRA self-training run (1 round, `student_init="reset"`), from a base model saved on disk."""
    root = tmp_path_factory.mktemp("lora")
    tokenizer = make_tokenizer(str(root))
    make_model().save_pretrained(root / "base")
    model = AutoModelForSequenceClassification.from_pretrained(root / "base")
    reference = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    recorder = TrainableStateRecorder()
    peft_config = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16)
    args = tiny_config(
        root / "out",
        self_training_rounds=1,
        confidence_threshold=0.5,
        class_balance=False,  # every prediction passes 0.5: round 1 always trains on pseudo-labels
        learning_rate=3e-2,
        num_train_epochs=4,
    )
    trainer = SemiSupervisedTrainer(
        model,
        args,
        train_dataset=toy_dataset(32, seed=0),
        eval_dataset=toy_dataset(32, seed=2),
        processing_class=tokenizer,
        callbacks=[recorder],
        unlabeled_dataset=toy_dataset(48, seed=1),
        peft_config=peft_config,
    )
    trainer.train()
    return SimpleNamespace(
        root=root,
        trainer=trainer,
        tokenizer=tokenizer,
        reference=reference,
        recorder=recorder,
        peft_config=peft_config,
    )


# ---- What trains ----------------------------------------------------------------------------------------------------
def test_only_adapter_and_head_train_and_base_is_unchanged(lora_run):
    model = lora_run.trainer.model
    assert isinstance(model, PeftModel)
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    assert any("classifier.modules_to_save" in name for name in trainable)

    frozen = {base_name(n): p for n, p in model.named_parameters() if not p.requires_grad}
    # Every weight of the original model is still there, frozen and bit-identical after training.
    assert set(lora_run.reference) <= set(frozen)
    for name in lora_run.reference:
        assert torch.equal(frozen[name].detach().cpu(), lora_run.reference[name]), name


def test_adapter_and_head_weights_changed(lora_run):
    start, end = lora_run.recorder.begin[0], lora_run.recorder.end[-1]
    lora_b = [name for name in start if "lora_B" in name]
    head = [name for name in start if "classifier.modules_to_save" in name]
    assert lora_b and head
    assert all(not torch.equal(start[name], end[name]) for name in lora_b + head)


def test_reset_starts_each_round_from_the_initial_adapter(lora_run):
    recorder = lora_run.recorder
    assert len(recorder.begin) == 2  # round 0 and round 1
    initial, round0_end, round1_start = recorder.begin[0], recorder.end[0], recorder.begin[1]
    assert set(round1_start) == set(initial)
    assert all(torch.equal(round1_start[name], initial[name]) for name in initial)
    assert any(not torch.equal(round0_end[name], initial[name]) for name in initial)


def test_pseudo_labels_come_from_the_adapted_model(lora_run):
    trainer, tokenizer = lora_run.trainer, lora_run.tokenizer
    history = trainer.self_training_history
    assert history[1]["num_pseudo_labels"] > 0
    pool = toy_dataset(20, seed=5)
    labeled = trainer.pseudo_label(pool)
    logits = logits_of(trainer.model, tokenizer, pool["text"])
    probabilities = torch.softmax(logits, dim=-1)
    assert list(labeled["pseudo_label"]) == logits.argmax(-1).tolist()
    assert torch.allclose(torch.tensor(list(labeled["confidence"])), probabilities.max(-1).values, atol=1e-5)
    with trainer.model.disable_adapter():
        base_logits = logits_of(trainer.model, tokenizer, pool["text"])
    assert not torch.allclose(base_logits, logits, atol=1e-4)


# ---- Saving ---------------------------------------------------------------------------------------------------------
def test_saved_adapter_reloads_and_predicts_the_same(lora_run):
    trainer, tokenizer = lora_run.trainer, lora_run.tokenizer
    output_dir = lora_run.root / "adapter"
    trainer.save_model(str(output_dir))
    files = set(os.listdir(output_dir))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "self_training_history.json"} <= files
    assert "model.safetensors" not in files

    texts = toy_dataset(16, seed=7)["text"]
    expected = logits_of(trainer.model, tokenizer, texts)
    id2label = trainer.model.config.id2label
    # As the model card tells users to load it: the class names come along.
    reloaded = AutoPeftModelForSequenceClassification.from_pretrained(
        output_dir, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    assert torch.allclose(logits_of(reloaded, tokenizer, texts), expected, atol=1e-5)
    assert reloaded.config.id2label == {0: "negative", 1: "positive"}
    base = AutoModelForSequenceClassification.from_pretrained(lora_run.root / "base")
    assert torch.allclose(
        logits_of(PeftModel.from_pretrained(base, output_dir), tokenizer, texts), expected, atol=1e-5
    )


def test_save_merged_model_writes_full_weights_and_keeps_training_state(lora_run, monkeypatch):
    trainer, tokenizer = lora_run.trainer, lora_run.tokenizer
    texts = toy_dataset(16, seed=8)["text"]
    expected = logits_of(trainer.model, tokenizer, texts)
    monkeypatch.setattr(trainer.args, "save_merged_model", True)
    output_dir = lora_run.root / "merged"
    os.makedirs(output_dir)
    (output_dir / "adapter_config.json").write_text("{}")  # left by an earlier save: must not shadow the merged model

    trainer.save_model(str(output_dir))
    files = set(os.listdir(output_dir))
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "self_training_history.json"} <= files
    assert not files & {"adapter_config.json", "adapter_model.safetensors"}
    merged = AutoModelForSequenceClassification.from_pretrained(output_dir)
    assert type(merged).__name__ == "BertForSequenceClassification"
    assert torch.allclose(logits_of(merged, tokenizer, texts), expected, atol=1e-5)
    # The merge ran on a copy: the trainer still holds the unmerged adapter.
    assert isinstance(trainer.model, PeftModel)
    assert torch.equal(logits_of(trainer.model, tokenizer, texts), expected)

    # Checkpoints keep the adapter, so training can resume from them.
    checkpoint = lora_run.root / "out" / "checkpoint-7"
    trainer.save_model(str(checkpoint))
    files = set(os.listdir(checkpoint))
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert "self_training_history.json" not in files


# ---- Construction ---------------------------------------------------------------------------------------------------
def make_trainer(tmp_path, model=None, peft_config=None, **kwargs):
    return SemiSupervisedTrainer(
        model if model is not None else make_model(),
        tiny_config(tmp_path / "out", self_training_rounds=0, **kwargs),
        train_dataset=toy_dataset(16),
        processing_class=make_tokenizer(str(tmp_path)),
        peft_config=peft_config,
    )


def test_peft_config_is_copied_not_mutated(tmp_path):
    peft_config = LoraConfig(r=4)
    trainer = make_trainer(tmp_path, peft_config=peft_config)
    assert peft_config.task_type is None and peft_config.modules_to_save is None
    assert trainer.model.active_peft_config.task_type == "SEQ_CLS"
    assert any(p.requires_grad for n, p in trainer.model.named_parameters() if "classifier" in n)


def test_ready_peft_model_is_trained_as_given(tmp_path):
    model = get_peft_model(make_model(), LoraConfig(task_type="SEQ_CLS", r=4))
    trainer = make_trainer(tmp_path, model=model)
    assert trainer.model is model


@pytest.mark.parametrize(
    "peft_config, match",
    [
        ({"r": 8}, "`peft_config` must be a `peft.PeftConfig`"),
        (LoraConfig(task_type="CAUSAL_LM"), "`peft_config.task_type` must be 'SEQ_CLS'.*'CAUSAL_LM'"),
        # A decoder's module names on BERT: the message names them and the layers BERT has.
        (
            LoraConfig(target_modules=["q_proj", "v_proj"]),
            r"`peft_config.target_modules`=\['q_proj', 'v_proj'\] could not be adapted in "
            r"BertForSequenceClassification .*'query'.*'value'",
        ),
        # peft also takes a regex string: the message shows it as written.
        (LoraConfig(target_modules=r".*q_proj"), r"`peft_config.target_modules`='\.\*q_proj' could not be adapted"),
    ],
)
def test_bad_peft_config_raises(tmp_path, peft_config, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, peft_config=peft_config)


def test_peft_model_with_peft_config_raises(tmp_path):
    model = get_peft_model(make_model(), LoraConfig(task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match="already a `PeftModel`.*`peft_config`"):
        make_trainer(tmp_path, model=model, peft_config=LoraConfig(task_type="SEQ_CLS"))


def test_frozen_peft_model_raises(tmp_path):
    model = get_peft_model(make_model(), LoraConfig(task_type="SEQ_CLS", inference_mode=True))
    with pytest.raises(ValueError, match="no trainable parameters.*is_trainable=True"):
        make_trainer(tmp_path, model=model)


def tiny_bart():
    from transformers import BartConfig, BartForSequenceClassification

    config = BartConfig(
        vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    return BartForSequenceClassification(config)


def tiny_deberta():
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    config = DebertaV2Config(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    return DebertaV2ForSequenceClassification(config)


def trainable_modules(model):
    """The top-level modules of the unwrapped classifier with a parameter that trains."""
    names = (name.removeprefix("base_model.model.") for name, p in model.named_parameters() if p.requires_grad)
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize(
    "make, target_modules, head",
    [
        (make_model, None, {"classifier"}),  # BERT's pooler is pretrained, inside the body: it stays frozen
        # peft's SEQ_CLS defaults (`classifier`, `score`, matched as suffixes) miss these heads, or part of them
        (tiny_deberta, ["query_proj", "value_proj"], {"pooler", "classifier"}),
        (tiny_bart, ["q_proj", "v_proj"], {"classification_head"}),
    ],
)
def test_every_module_of_the_head_trains(tmp_path, make, target_modules, head):
    peft_config = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=target_modules)
    model = make()
    body = model.base_model_prefix
    trainer = make_trainer(tmp_path, model=model, peft_config=peft_config)
    assert trainable_modules(trainer.model) == {body} | head  # the body only through its LoRA weights
    trainable = [n.removeprefix("base_model.model.") for n, p in trainer.model.named_parameters() if p.requires_grad]
    body_trainable = [n for n in trainable if n.startswith(f"{body}.")]
    assert body_trainable and all("lora_" in n for n in body_trainable)
    assert peft_config.modules_to_save is None  # the caller's config is not modified
    saved = trainer.model.active_peft_config.modules_to_save  # what adapter_config.json will list
    assert len(saved) == len(set(saved)), saved


def test_ready_peft_model_with_a_frozen_head_module_warns(tmp_path, caplog):
    model = get_peft_model(tiny_deberta(), LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query_proj"]))
    with caplog.at_level(logging.WARNING, logger="hf_semisup"):
        make_trainer(tmp_path, model=model)
    assert "['pooler']" in caplog.text and "modules_to_save" in caplog.text


def test_head_outside_modules_to_save_raises(tmp_path):
    # A ready PeftModel whose head, BART's `classification_head`, is missed by peft's SEQ_CLS defaults.
    model = get_peft_model(tiny_bart(), LoraConfig(task_type="SEQ_CLS", target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="classification head.*`peft_config.modules_to_save`"):
        make_trainer(tmp_path, model=model)


def test_missing_peft_raises(tmp_path, monkeypatch):
    import hf_semisup.adapters

    monkeypatch.setattr(hf_semisup.adapters, "is_peft_available", lambda: False)
    with pytest.raises(ImportError, match="pip install peft"):
        make_trainer(tmp_path, peft_config=LoraConfig(task_type="SEQ_CLS"))
    assert not isinstance(make_trainer(tmp_path).model, PeftModel)  # without a peft_config, peft is not needed


def test_save_merged_model_rejects_fsdp(tmp_path):
    with pytest.raises(ValueError, match="`save_merged_model`=True is not supported with DeepSpeed or FSDP"):
        SemiSupervisedConfig(output_dir=str(tmp_path), use_cpu=True, fsdp=True, save_merged_model=True)
