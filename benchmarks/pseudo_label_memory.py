# python benchmarks/pseudo_label_memory.py --sizes 10000 100000 1000000
"""
Peak resident memory of a labeling pass over 10k, 100k and 1M short synthetic texts with a tiny BERT (2 layers,
hidden size 32), each in a fresh subprocess. The pool is an Arrow file on disk, memory-mapped; the subprocess builds a
`SemiSupervisedTrainer` (which tokenizes the pool into a cached Arrow file) and calls `pseudo_label()` once.
Peak RSS is the subprocess's `ru_maxrss` (imports, model, tokenization and labeling all included).
Prints a markdown table. Target: the 1M-row peak within 300 MB of the 10k-row peak.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


WORDS = "good great fine nice superb lovely bad awful poor terrible boring dull the movie plot actor scene film was is a very and story cast it".split()  # noqa: E501


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def write_pool(path: str, num_rows: int, seed: int = 0):
    """`num_rows` texts of 3 to 12 words, written chunk by chunk to an Arrow stream file that `datasets` can map."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    schema = pa.schema([("text", pa.string())])
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, num_rows, 100_000):
            size = min(100_000, num_rows - start)
            lengths = rng.integers(3, 13, size=size)
            words = rng.integers(0, len(WORDS), size=int(lengths.sum()))
            ends = np.cumsum(lengths)
            texts = [" ".join(WORDS[w] for w in words[end - n : end]) for end, n in zip(ends, lengths)]
            writer.write_table(pa.table({"text": texts}, schema=schema))


def measure(workdir: str, batch_size: int):
    """Runs in the fresh subprocess: one labeling pass, then print the figures as JSON."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import datasets
    from conftest import make_model, make_tokenizer, toy_dataset

    from hf_semisup import SemiSupervisedConfig, SemiSupervisedTrainer

    datasets.disable_progress_bars()
    pool = datasets.Dataset.from_file(os.path.join(workdir, "pool.arrow"))
    start_kb = status_kb("VmHWM")
    started = time.perf_counter()
    trainer = SemiSupervisedTrainer(
        model=make_model(seed=0),
        args=SemiSupervisedConfig(
            output_dir=os.path.join(workdir, "output"),
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            self_training_rounds=0,
            per_device_eval_batch_size=batch_size,
        ),  # fmt: skip
        train_dataset=toy_dataset(32),
        processing_class=make_tokenizer(workdir),
        unlabeled_dataset=pool,
    )
    tokenized = time.perf_counter()
    after_tokenizing_kb = status_kb("VmHWM")
    labeled = trainer.pseudo_label()
    done = time.perf_counter()
    assert len(labeled) == len(pool)
    print(json.dumps({
        "rows": len(pool),
        "before_kb": start_kb,
        "after_tokenizing_kb": after_tokenizing_kb,
        "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "end_anon_kb": status_kb("RssAnon"),
        "end_file_kb": status_kb("RssFile"),
        "tokenize_s": tokenized - started,
        "label_s": done - tokenized,
    }))  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure, args.batch_size)

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    # One intra-op thread unless told otherwise: on a busy machine, more threads than free cores make a tiny model's
    # kernels spin-wait, and this benchmark is about memory.
    env.setdefault("OMP_NUM_THREADS", "1")
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as workdir:
            write_pool(os.path.join(workdir, "pool.arrow"), size)
            command = [sys.executable, __file__, "--measure", workdir, "--batch-size", str(args.batch_size)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"The {size}-row run failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    base = results[0]["peak_kb"]
    print(
        f"Tiny BERT (2 layers, hidden 32), batch size {args.batch_size}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, "
        "one fresh process per pool size\n"
    )
    print("| rows | peak RSS (MB) | vs first (MB) | RSS after tokenizing (MB) | anon / file-backed RSS at end (MB) "
          "| tokenize (s) | label (s) | label rows/s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['peak_kb'] / 1024:.0f} | {(r['peak_kb'] - base) / 1024:+.0f} "
            f"| {r['after_tokenizing_kb'] / 1024:.0f} | {r['end_anon_kb'] / 1024:.0f} / {r['end_file_kb'] / 1024:.0f} "
            f"| {r['tokenize_s']:.1f} | {r['label_s']:.1f} | {r['rows'] / r['label_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
