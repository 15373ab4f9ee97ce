"""`first_teacher="embeddings"`: class prototypes from the initial encoder label the pool in round 1."""

import logging
from unittest import mock

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from accelerate import Accelerator
from conftest import make_model, tiny_config, toy_dataset
from transformers import DataCollatorWithPadding, TrainerCallback

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer
from hf_semisup.embedding_teacher import (
    PROTOTYPE_TEMPERATURE,
    PrototypeClassifier,
    class_prototypes,
    label_name_features,
    mean_pooled_embeddings,
    usable_class_names,
)
from hf_semisup.selection import select_top_k
from hf_semisup.teachers import TEACHERS, PrototypeTeacher


def embed(model, tokenizer, texts) -> torch.Tensor:
    """The reference: one text at a time (no padding), mean of its last hidden states, unit length."""
    model.eval()
    with torch.no_grad():
        rows = []
        for text in texts:
            hidden = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states[-1]
            rows.append(torch.nn.functional.normalize(hidden[0].mean(0), dim=-1))
    return torch.stack(rows)


def prepared_labeled(tokenizer, dataset):
    encoded = dataset.map(lambda b: tokenizer(b["text"], truncation=True), batched=True)
    return encoded.map(lambda b: {"labels": [int(label == "positive") for label in b["label"]]}, batched=True)


def test_usable_class_names():
    assert usable_class_names({0: "negative", 1: "positive"}) == ["negative", "positive"]
    assert usable_class_names({0: "LABEL_0", 1: "LABEL_1"}) is None
    assert usable_class_names({0: 0, 1: 1}) is None
    assert usable_class_names({0: "neg", 1: " "}) is None


def test_mean_pooling_ignores_padding(tokenizer):
    model = make_model(seed=1).eval()
    texts = ["great movie", "the plot was very dull and the cast was weak"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = mean_pooled_embeddings(model, dict(batch))
    torch.testing.assert_close(pooled, embed(model, tokenizer, texts), rtol=0, atol=1e-5)


def prototypes_on_cpu(model, tokenizer, labeled, batch_size, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return class_prototypes(
            model,
            labeled,
            DataCollatorWithPadding(tokenizer),
            Accelerator(cpu=True),
            batch_size,
            num_labels=2,
            disable_tqdm=True,
            **kwargs,
        )


@pytest.mark.parametrize("batch_size", [3, 64])
def test_class_prototypes_are_the_class_means_plus_the_names(tokenizer, batch_size):
    model = make_model(seed=1)
    dataset = toy_dataset(10, seed=4)
    labeled = prepared_labeled(tokenizer, dataset)
    labels = np.asarray(labeled["labels"])
    names = ["This sentence is negative.", "This sentence is positive."]
    name_features = [dict(tokenizer(text)) for text in names]
    prototypes = prototypes_on_cpu(model, tokenizer, labeled, batch_size, name_features=name_features)
    assert model.training  # left as it was found
    embeddings = embed(model, tokenizer, dataset["text"])
    means = torch.stack([embeddings[labels == c].mean(0) for c in range(2)])
    expected = torch.nn.functional.normalize(
        torch.nn.functional.normalize(means, dim=-1) + embed(model, tokenizer, names), dim=-1
    )
    torch.testing.assert_close(prototypes, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("batch_size", [3, 64])
def test_refined_prototypes_add_the_chosen_pool_rows_to_the_means(tokenizer, batch_size, streamed):
    model = make_model(seed=1)
    dataset, pool_rows = toy_dataset(10, seed=4), toy_dataset(25, seed=5)
    labeled = prepared_labeled(tokenizer, dataset)
    pool = pool_rows.map(
        lambda b: tokenizer(b["text"], truncation=True), batched=True, remove_columns=["text", "label"]
    )
    pool_labels = np.full(len(pool), -1)
    pool_labels[[0, 3, 4, 11, 17, 24]] = [1, 0, 1, 1, 0, 0]
    pool = pool.to_iterable_dataset(num_shards=2) if streamed else pool
    prototypes = prototypes_on_cpu(model, tokenizer, labeled, batch_size, pool=pool, pool_labels=pool_labels)
    chosen = pool_labels >= 0
    embeddings = torch.cat(
        [embed(model, tokenizer, dataset["text"]), embed(model, tokenizer, pool_rows["text"])[chosen]]
    )
    labels = np.concatenate([np.asarray(labeled["labels"]), pool_labels[chosen]])
    expected = torch.stack([embeddings[labels == c].mean(0) for c in range(2)])
    torch.testing.assert_close(prototypes, torch.nn.functional.normalize(expected, dim=-1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("streamed", [False, True])
def test_refinement_with_no_pool_row_kept_is_the_labeled_prototypes(tokenizer, streamed):
    # e.g. the threshold strategy when no prototype score reaches `confidence_threshold`
    model = make_model(seed=1)
    labeled = prepared_labeled(tokenizer, toy_dataset(10, seed=4))
    pool = toy_dataset(12, seed=5).map(
        lambda b: tokenizer(b["text"], truncation=True), batched=True, remove_columns=["text", "label"]
    )
    pool = pool.to_iterable_dataset() if streamed else pool
    refined = prototypes_on_cpu(model, tokenizer, labeled, 4, pool=pool, pool_labels=np.full(12, -1))
    torch.testing.assert_close(refined, prototypes_on_cpu(model, tokenizer, labeled, 4), rtol=0, atol=1e-6)


def test_prototype_classifier_scores_cosine_similarity(tokenizer):
    model = make_model(seed=1)
    prototypes = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    texts = ["great movie", "awful and dull"]
    with torch.no_grad():
        logits = PrototypeClassifier(model.eval(), prototypes)(**tokenizer(texts, padding=True, return_tensors="pt"))
    expected = embed(model, tokenizer, texts) @ prototypes.T / PROTOTYPE_TEMPERATURE
    torch.testing.assert_close(logits.logits, expected, rtol=0, atol=1e-4)


def run_embedding_teacher(tmp_path, tokenizer, **config):
    model = make_model(seed=1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    args = tiny_config(
        tmp_path,
        self_training_rounds=1,
        first_teacher="embeddings",
        selection_strategy="topk",
        pseudo_label_fraction=0.25,
        **config,
    )
    labeled, pool = toy_dataset(16, seed=1), toy_dataset(40, seed=2)
    states = {}

    def weights(model):
        return {k: v.clone() for k, v in model.state_dict().items()}

    class SpyTeacher(PrototypeTeacher):
        def label(self, context):
            states["before"] = weights(context.model)
            result = super().label(context)
            states["after"] = weights(context.model)
            return result

    class StudentSpy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if trainer.current_round == 1:  # the student, as round 1 starts it
                states["student"] = weights(model)

    trainer = SemiSupervisedTrainer(
        model=model,
        args=args,
        train_dataset=labeled,
        processing_class=tokenizer,
        unlabeled_dataset=pool,
        callbacks=[StudentSpy()],
    )
    with mock.patch.dict(TEACHERS, {"embeddings": SpyTeacher}):
        trainer.train()
    return trainer, initial, states, labeled, pool


def expected_prototype_labels(
    initial, tokenizer, labeled, pool, template="This sentence is {}.", refinement_steps=1, fraction=0.4
):
    """The reference round 1: prototypes from the labeled rows, re-estimated `refinement_steps` times with round 1's
    class-balanced top `fraction` of the pool, then the pool's labels."""
    model = make_model(seed=1)
    model.load_state_dict(initial)
    embeddings = embed(model, tokenizer, labeled["text"])
    pool_embeddings = embed(model, tokenizer, pool["text"])
    labels = np.asarray([int(label == "positive") for label in labeled["label"]])
    names = embed(model, tokenizer, [template.format(n) for n in ("negative", "positive")]) if template else 0

    def prototypes(rows, rows_labels):
        means = torch.stack([rows[rows_labels == c].mean(0) for c in range(2)])
        return torch.nn.functional.normalize(torch.nn.functional.normalize(means, dim=-1) + names, dim=-1)

    current = prototypes(embeddings, labels)
    for _ in range(refinement_steps):
        scores = (pool_embeddings @ current.T / PROTOTYPE_TEMPERATURE).softmax(-1)
        confidences, predicted = scores.max(-1)
        prior = np.bincount(labels, minlength=2) / len(labels)
        kept = select_top_k(predicted.numpy(), confidences.numpy(), fraction, 1, class_prior=prior)
        rows = torch.cat([embeddings, pool_embeddings[kept]])
        current = prototypes(rows, np.concatenate([labels, predicted.numpy()[kept]]))
    return (pool_embeddings @ current.T).argmax(-1).numpy()


def test_round_1_is_labeled_by_the_initial_encoders_prototypes(tmp_path, tokenizer):
    trainer, initial, states, labeled, pool = run_embedding_teacher(tmp_path, tokenizer)
    table = pq.read_table(tmp_path / "pseudo_labels" / "round-1.parquet").to_pydict()
    expected = expected_prototype_labels(initial, tokenizer, labeled, pool, fraction=0.25)
    np.testing.assert_array_equal(table["label"], expected)
    # The refinement changes labels here: the check would catch prototypes from the labeled rows alone.
    unrefined = expected_prototype_labels(initial, tokenizer, labeled, pool, refinement_steps=0)
    assert (unrefined != expected).any()
    # The round-0 model, trained on the labeled set, is a different teacher: the check would catch labels from it.
    assert any(not torch.equal(states["before"][k], initial[k]) for k in initial)
    # Labeling puts the trained weights back; the student then starts from the initial ones (`reset`).
    for k in initial:
        torch.testing.assert_close(states["after"][k], states["before"][k], rtol=0, atol=0)
        torch.testing.assert_close(states["student"][k], initial[k], rtol=0, atol=0)
    assert trainer.self_training_history[1]["num_pseudo_labels"] == 10  # topk: 0.25 of 40
    assert trainer.self_training_history[1]["teacher_pool_accuracy"] == pytest.approx(
        float(np.mean(expected == np.asarray([int(label == "positive") for label in pool["label"]])))
    )


@pytest.mark.parametrize("steps", [0, 2])
def test_prototype_refinement_steps(tmp_path, tokenizer, steps):
    trainer, initial, _, labeled, pool = run_embedding_teacher(tmp_path, tokenizer, prototype_refinement_steps=steps)
    table = pq.read_table(tmp_path / "pseudo_labels" / "round-1.parquet").to_pydict()
    expected = expected_prototype_labels(initial, tokenizer, labeled, pool, refinement_steps=steps, fraction=0.25)
    np.testing.assert_array_equal(table["label"], expected)


def test_continue_student_keeps_the_round_0_weights(tmp_path, tokenizer):
    trainer, initial, states, labeled, pool = run_embedding_teacher(tmp_path, tokenizer, student_init="continue")
    table = pq.read_table(tmp_path / "pseudo_labels" / "round-1.parquet").to_pydict()
    expected = expected_prototype_labels(initial, tokenizer, labeled, pool, fraction=0.25)
    np.testing.assert_array_equal(table["label"], expected)
    # ... and the student continues from the round-0 model, not from the initial weights the prototypes used.
    for k in initial:
        torch.testing.assert_close(states["after"][k], states["before"][k], rtol=0, atol=0)
        torch.testing.assert_close(states["student"][k], states["before"][k], rtol=0, atol=0)
    assert any(not torch.equal(states["student"][k], initial[k]) for k in initial)


def test_placeholder_class_names_are_not_embedded(tmp_path, tokenizer, caplog):
    model = make_model(seed=1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    args = tiny_config(tmp_path, self_training_rounds=1, first_teacher="embeddings", selection_strategy="topk")
    labeled, pool = toy_dataset(16, seed=1, names=None), toy_dataset(40, seed=2, names=None)
    trainer = SemiSupervisedTrainer(
        model=model, args=args, train_dataset=labeled, processing_class=tokenizer, unlabeled_dataset=pool
    )
    with caplog.at_level(logging.INFO, logger="hf_semisup.embedding_teacher"):
        trainer.train()
    assert "numbers or placeholders, so `label_name_template` is unused" in caplog.text
    named = labeled.map(lambda row: {"label": ["negative", "positive"][row["label"]]})
    table = pq.read_table(tmp_path / "pseudo_labels" / "round-1.parquet").to_pydict()
    expected = expected_prototype_labels(initial, tokenizer, named, pool, template=None)
    np.testing.assert_array_equal(table["label"], expected)


def test_no_tokenizer_no_label_names(tmp_path, tokenizer, caplog):
    args = tiny_config(tmp_path, self_training_rounds=1, first_teacher="embeddings")
    trainer = SemiSupervisedTrainer(
        model=make_model(),
        args=args,
        train_dataset=toy_dataset(8),
        processing_class=tokenizer,
        unlabeled_dataset=toy_dataset(8, seed=1),
    )
    template, id2label = trainer.args.label_name_template, trainer.model.config.id2label
    assert len(label_name_features(template, id2label, trainer.processing_class)) == 2
    # No tokenizer: e.g. pre-tokenized datasets and a collator of their own
    with caplog.at_level(logging.INFO, logger="hf_semisup.embedding_teacher"):
        assert label_name_features(template, id2label, None) is None
    assert "no `processing_class` to tokenize it" in caplog.text


def test_label_name_template_from_the_command_line(tmp_path):
    from hf_semisup.cli import make_train_parser, parse_train_args

    def parsed(value):
        argv = ["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--train_file", "x.csv"]
        argv += ["--label_name_template", value]
        return parse_train_args(make_train_parser(), argv)[-1].label_name_template

    assert parsed("none") is None and parsed("None") is None and parsed("") is None
    assert parsed("Label: {}") == "Label: {}"
    argv = ["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--train_file", "x.csv"]
    refinement = parse_train_args(make_train_parser(), argv + ["--prototype_refinement_steps", "0"])[-1]
    assert refinement.prototype_refinement_steps == 0


def test_first_teacher_config_errors(tmp_path):
    with pytest.raises(ValueError, match="`first_teacher` must be one of .* got 'prototypes'"):
        SemiSupervisedConfig(output_dir=str(tmp_path), first_teacher="prototypes")
    with pytest.raises(ValueError, match="`label_name_template` must be None or a string with one `{}`"):
        SemiSupervisedConfig(output_dir=str(tmp_path), label_name_template="This sentence is good.")
    for steps in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"`prototype_refinement_steps` must be an integer >= 0, got {steps!r}"):
            SemiSupervisedConfig(output_dir=str(tmp_path), prototype_refinement_steps=steps)


def test_peft_student_is_labeled_by_the_base_encoders_prototypes(tmp_path, tokenizer):
    from peft import LoraConfig

    initial = make_model(seed=1).state_dict()
    args = tiny_config(tmp_path, self_training_rounds=1, first_teacher="embeddings", selection_strategy="topk")
    labeled, pool = toy_dataset(16, seed=1), toy_dataset(40, seed=2)
    trainer = SemiSupervisedTrainer(
        model=make_model(seed=1),
        args=args,
        train_dataset=labeled,
        processing_class=tokenizer,
        unlabeled_dataset=pool,
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8),
    )
    trainer.train()
    # A fresh LoRA adapter adds zero: the prototypes are the base encoder's, whatever round 0 trained.
    table = pq.read_table(tmp_path / "pseudo_labels" / "round-1.parquet").to_pydict()
    np.testing.assert_array_equal(table["label"], expected_prototype_labels(initial, tokenizer, labeled, pool))


def test_a_prototype_pass_leaves_the_encoder_in_its_mode(tmp_path, tokenizer):
    from hf_semisup.pseudo_labeling import predict_pool

    trainer = SemiSupervisedTrainer(
        make_model(), tiny_config(tmp_path, self_training_rounds=1), train_dataset=toy_dataset(8),
        processing_class=tokenizer, unlabeled_dataset=toy_dataset(8, seed=1),
    )  # fmt: skip
    prototypes = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    for mode in (False, True):
        trainer.model.train(mode)
        wrapper = PrototypeClassifier(trainer.model, prototypes)
        predict_pool(
            wrapper, trainer.unlabeled_dataset, trainer.data_collator, trainer.accelerator, 4, disable_tqdm=True
        )
        assert trainer.model.training is mode  # a new wrapper once left its encoder's dropout on
