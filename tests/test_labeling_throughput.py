"""The labeling-throughput benchmark runs end to end and checks that its passes agree (tiny model, a small file)."""

import json
import os
import subprocess
import sys


SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "labeling_throughput.py")


def test_the_benchmark_prints_one_row_per_method(tmp_path):
    for split, n in (("train", 60), ("test", 20)):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"text": "a film " + "rather good " * (i % 7) + str(i), "label": i % 2}) + "\n")
    result = subprocess.run(
        [sys.executable, SCRIPT, "--data", str(tmp_path), "--models", "tiny", "--rows", "150", "--repeats", "1",
         "--batch-size", "16", "--threads", "1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| tiny |")]
    assert [row.split("|")[2].strip() for row in rows] == ["floor", "bare loop", "pseudo_label", "prototype teacher"]
    assert "150 rows of" in result.stdout
