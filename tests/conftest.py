import os
import random

import pytest
import torch


# No test may reach the network: `evaluate.load` and the Hub fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the threads mostly wait on each other
# (one test: 23 s with one thread, 165 s with two).
os.environ.setdefault("OMP_NUM_THREADS", "1")

torch.set_num_threads(1)

POSITIVE = ["good", "great", "fine", "nice", "superb", "lovely", "brilliant", "fun"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "boring", "dull", "weak", "mess"]
FILLER = ["the", "movie", "plot", "actor", "scene", "film", "was", "is", "a", "very", "and", "story", "cast", "it"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tokenizer(directory):
    from transformers import BertTokenizerFast

    path = os.path.join(directory, "vocab.txt")
    # Written to a private file, then renamed: processes of a multi-process test share `directory`, and one must never
    # read the vocabulary while another is rewriting it ("Missing [UNK] token").
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("\n".join(SPECIAL + POSITIVE + NEGATIVE + FILLER) + "\n")
    os.replace(tmp, path)
    return BertTokenizerFast(vocab=path, model_max_length=64)


def make_model(num_labels=2, seed=0, **config):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    defaults = dict(
        vocab_size=len(SPECIAL + POSITIVE + NEGATIVE + FILLER),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    defaults.update(config)
    return BertForSequenceClassification(BertConfig(**defaults))


def toy_rows(n, seed=0, names=("negative", "positive"), positive_share=0.5):
    """A learnable sentiment task: each text has filler words and one to two words of its class."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = 1 if rng.random() < positive_share else 0
        words = rng.choices(FILLER, k=rng.randint(3, 10)) + rng.choices(
            POSITIVE if label else NEGATIVE, k=rng.randint(1, 2)
        )
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(names[label] if names else label)
    return {"text": texts, "label": labels}


def toy_dataset(n, seed=0, **kwargs):
    from datasets import Dataset

    return Dataset.from_dict(toy_rows(n, seed, **kwargs))


@pytest.fixture
def tokenizer(tmp_path):
    return make_tokenizer(str(tmp_path))


def tiny_config(output_dir, **kwargs):
    from hf_semisup import SemiSupervisedConfig

    defaults = dict(
        output_dir=str(output_dir),
        report_to="none",
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=5e-3,
        num_train_epochs=3,
        logging_steps=5,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        min_steps_per_round=0,  # the epochs above, as written: tests count on their step numbers
        student_epochs=None,  # ... in every round
        # The teacher and selection most tests were written for (they set thresholds); test_embedding_teacher.py and
        # test_selection_strategies.py cover the defaults.
        first_teacher="model",
        selection_strategy="threshold",
        # Self-training alone, unless a test asks for the consistency loss; test_consistency.py covers the default.
        consistency_weight=0.0,
    )
    defaults.update(kwargs)
    return SemiSupervisedConfig(**defaults)
