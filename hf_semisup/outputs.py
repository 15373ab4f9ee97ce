"""
Every file and folder a run writes under `output_dir`, and what `push_to_hub` leaves out. Names are part of the public
contract (scripts read them): change them here only, and only with a migration.

    README.md                                   the model card
    self_training_history.json                  one record per round
    self_training_rounds.png                    the command line's per-round chart
    pseudo_labels/round-<r>.parquet             every pool row's pseudo-label, confidence and selection (inspection)
    pseudo_labels/cache/                        the tokenized pool, and a streamed pool's selected rows
    round-<r>/checkpoint-<step>/                Trainer checkpoints of round r, each with a self-training state
    round-<r>/self_training_pseudo_labels.npz   round r's labeling pass and selection (a resumed round reuses them)
    round-<r>/self_training_state.json          written right after the labeling pass: round r is ready to fit
    round-<r>/round-end/                        the model at the end of round r, with a state (last and best kept)
    <folder>/self_training_rng_<rank>.json      generator states of each process, beside a state
"""

import os

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


CARD_NAME = "README.md"
HISTORY_NAME = "self_training_history.json"
CHART_NAME = "self_training_rounds.png"
STATE_NAME = "self_training_state.json"
# NumPy arrays: for a million-row pool (400,000 accepted), 15 MB written in 0.04 s, against 36 MB in 1.6 s as JSON;
# with soft pseudo-labels (2 classes), 23 MB against 101 MB in 6.6 s. Runs saved as JSON by earlier versions resume.
SELECTION_NAME = "self_training_pseudo_labels.npz"
RNG_NAME = "self_training_rng_{rank}.json"
TRAINER_STATE_NAME = "trainer_state.json"
ROUND_END_DIR = "round-end"
PSEUDO_LABELS_DIR = "pseudo_labels"

# Round checkpoints and pseudo-label files (with the tokenized pool's cache) are working files, not the model.
HUB_IGNORE_PATTERNS = ["round-*", f"{PSEUDO_LABELS_DIR}/*"]


def round_dir(output_dir: str, round_: int) -> str:
    return os.path.join(output_dir, f"round-{round_}")


def round_end_dir(output_dir: str, round_: int) -> str:
    return os.path.join(round_dir(output_dir, round_), ROUND_END_DIR)


def selection_path(output_dir: str, round_: int) -> str:
    return os.path.join(round_dir(output_dir, round_), SELECTION_NAME)


def pseudo_label_table_path(output_dir: str, round_: int) -> str:
    return os.path.join(output_dir, PSEUDO_LABELS_DIR, f"round-{round_}.parquet")


def cache_dir(output_dir: str) -> str:
    """Where the tokenized pool (and a streamed pool's selected rows) are cached."""
    return os.path.join(output_dir, PSEUDO_LABELS_DIR, "cache")


def stream_train_cache(output_dir: str, round_: int) -> str:
    return os.path.join(cache_dir(output_dir), f"round-{round_}-train.arrow")


def is_checkpoint_dir(directory: str) -> bool:
    """A Trainer checkpoint folder (`checkpoint-<step>`), as opposed to a final save."""
    return os.path.basename(os.path.normpath(directory)).startswith(f"{PREFIX_CHECKPOINT_DIR}-")
