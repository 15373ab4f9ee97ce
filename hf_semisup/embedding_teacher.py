"""
The first teacher from sentence embeddings: class prototypes in the pretrained encoder's own embedding space.

A classifier fine-tuned on a few labeled examples is a weak, badly calibrated teacher: on movie_snippets with 8 labels
per class, the MiniLM fine-tuned in round 0 labels the pool at 0.58 accuracy, and even its most confident fifth is only
0.62 right, so the students of later rounds learn its mistakes. The same pretrained encoder, untouched, already places
texts of a class near each other: scoring each text by the cosine similarity of its mean-pooled embedding to each
class's prototype (the mean embedding of the class's labeled examples, plus the embedding of a prompt naming the class,
as SetFit's templated zero-shot examples do) labels a 4,000-row pool at 0.635 and its most confident fifth at 0.791
(three seeds; `benchmarks/label_efficiency.py`, `benchmarks/README.md`). [`PrototypeClassifier`] is that teacher,
shaped like a sequence classifier so that [`~hf_semisup.pseudo_labeling.predict_pool`] runs it like any other;
[`~hf_semisup.teachers.PrototypeTeacher`] builds the prototypes, refines them and labels the pool with them.
"""

import logging
import re

import datasets
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import SequenceClassifierOutput

from .data import MODEL_INPUT_COLUMNS
from .pseudo_labeling import STREAM_CHUNK_BATCHES, shard_batches


logger = logging.getLogger(__name__)

# Cosine similarities of one text to different class prototypes differ by a few hundredths: this temperature turns a
# difference of 0.05 into odds of e to 1. Only the ranking matters to the `topk` selection strategy.
PROTOTYPE_TEMPERATURE = 0.05

# Class names that carry no meaning to embed: numbers and `PretrainedConfig`'s `LABEL_<i>` placeholders.
_PLACEHOLDER_NAME = re.compile(r"^(LABEL_)?\d+$")


def mean_pooled_embeddings(model, inputs: dict) -> torch.Tensor:
    """
    Unit-length mean of the last hidden states over the non-padding tokens, the sentence embedding that
    sentence-transformers models are trained for. `model` is any sequence classifier (a PEFT one too).
    """
    hidden = model(**inputs, output_hidden_states=True).hidden_states[-1].float()
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return nn.functional.normalize(pooled, dim=-1)


class PrototypeClassifier(nn.Module):
    """
    Scores texts by the cosine similarity of their embedding to each class prototype, divided by
    [`PROTOTYPE_TEMPERATURE`], as `logits`. Wraps (does not copy) the encoder.
    """

    def __init__(self, model, prototypes: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("prototypes", prototypes)
        # In the encoder's mode: a labeling pass puts the wrapper back in the mode it found, which must be the encoder's
        # (a new module is in training mode, and would leave the encoder's dropout on).
        self.training = model.training

    def forward(self, **inputs) -> SequenceClassifierOutput:
        embeddings = mean_pooled_embeddings(self.model, inputs)
        return SequenceClassifierOutput(logits=embeddings @ self.prototypes.to(embeddings).T / PROTOTYPE_TEMPERATURE)


def usable_class_names(id2label: dict) -> list[str] | None:
    """The class names in id order if every one is a word to embed, else `None` (numbers, `LABEL_0`, ...)."""
    names = [str(id2label[i]) for i in range(len(id2label))]
    if any(_PLACEHOLDER_NAME.match(name.strip()) or not name.strip() for name in names):
        return None
    return names


@torch.inference_mode()
def class_prototypes(
    model,
    labeled,
    collator,
    accelerator,
    batch_size: int,
    *,
    num_labels: int,
    name_features: list[dict] | None = None,
    pool=None,
    pool_labels: np.ndarray | None = None,
    disable_tqdm: bool = False,
) -> torch.Tensor:
    """
    One unit-length prototype per class, `(num_labels, hidden)`: the mean embedding of the class's labeled rows, plus,
    given `name_features` (one tokenized prompt per class, in class order), the prompt's embedding with equal weight.

    Given a tokenized `pool` and `pool_labels` (a class for each pool row, `-1` for rows left out), those pool rows join
    their class's labeled rows in the mean: one refinement step (see [`refined_pool_labels`]).

    Each process embeds its share of the rows; the per-class sums are added across processes, so every process returns
    the same prototypes. Must be called on every process.
    """
    sources = [(labeled, np.asarray(labeled["labels"]))]
    if pool is not None:
        sources.append((pool, np.asarray(pool_labels)))
    was_training = model.training
    model.eval()
    try:
        sums, counts = _class_sums(model, sources, collator, accelerator, batch_size, num_labels, disable_tqdm)
        names = _embed(model, _collate(collator, name_features, accelerator), accelerator) if name_features else None
    finally:
        model.train(was_training)
    if sums is None:  # a process with no rows still takes part in the reduction
        width = names.shape[-1] if names is not None else model.config.hidden_size
        sums = torch.zeros(num_labels, width, device=accelerator.device)
    if accelerator.num_processes > 1:
        sums, counts = accelerator.reduce(sums, reduction="sum"), accelerator.reduce(counts, reduction="sum")
    prototypes = nn.functional.normalize(sums / counts.clamp(min=1.0).unsqueeze(-1), dim=-1)
    if names is not None:
        prototypes = nn.functional.normalize(prototypes + names, dim=-1)
    return prototypes


def refined_pool_labels(pseudo_labels, selected: np.ndarray) -> np.ndarray:
    """
    `pool_labels` for [`class_prototypes`]: each selected row's predicted class, `-1` for every other row.

    Re-estimating the prototypes with the rows a round keeps is a k-means step from the labeled means: a handful of
    labeled texts place a prototype wherever they happen to sit, the pool's confident rows move it toward the centre of
    what the pool holds for the class (figures: `prototype_refinement_steps` in [`SemiSupervisedConfig`]).
    """
    pool_labels = np.full(len(pseudo_labels), -1, dtype=np.int64)
    pool_labels[selected] = pseudo_labels.labels[selected]
    return pool_labels


def _class_sums(model, sources, collator, accelerator, batch_size, num_labels, disable_tqdm):
    """
    This process's per-class sums of embeddings, `(num_labels, hidden)` (`None` if it embedded no row), and counts,
    over the rows of each `(dataset, labels)` in `sources` whose entry in `labels` is a class (not `-1`).
    """
    sums, counts = None, torch.zeros(num_labels, device=accelerator.device)
    progress = tqdm(
        total=sum(int((labels >= 0).sum()) for _, labels in sources),
        desc="Class prototypes",
        unit="rows",
        disable=disable_tqdm or not accelerator.is_main_process,
    )
    with progress:
        for dataset, labels in sources:
            for batch_rows, inputs in _batches(dataset, labels, collator, accelerator, batch_size, progress):
                embeddings = _embed(model, inputs, accelerator).float()
                if sums is None:
                    sums = torch.zeros(num_labels, embeddings.shape[-1], device=accelerator.device)
                batch_labels = torch.as_tensor(labels[batch_rows], device=accelerator.device)
                sums.index_add_(0, batch_labels, embeddings)
                counts += torch.bincount(batch_labels, minlength=num_labels).float()
    return sums, counts


def _batches(dataset, labels: np.ndarray, collator, accelerator, batch_size: int, progress):
    """
    This process's share of the rows of a `Dataset` or a streamed pool whose entry in `labels` is a class, as
    `(row indices, model inputs on the device)` batches.
    """
    if not isinstance(dataset, datasets.IterableDataset):
        rows = np.flatnonzero(labels >= 0)
        subset = dataset if len(rows) == len(dataset) else dataset.select(rows)
        for batch_rows, inputs in shard_batches(subset, collator, accelerator, batch_size, progress):
            yield rows[batch_rows], inputs
        return
    # A stream is read once, in chunks every process reads alike; each keeps its turn of the chosen rows.
    rank, world_size, offset = accelerator.process_index, accelerator.num_processes, 0
    for chunk in dataset.iter(batch_size=batch_size * world_size * STREAM_CHUNK_BATCHES):
        chosen = np.flatnonzero(labels[offset : offset + len(chunk["input_ids"])] >= 0)
        keys = [k for k in chunk if k in MODEL_INPUT_COLUMNS]
        mine = chosen[rank::world_size]
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            yield offset + batch, _collate(collator, [{k: chunk[k][i] for k in keys} for i in batch], accelerator)
        progress.update(len(chosen))
        offset += len(chunk["input_ids"])


def _collate(collator, features: list[dict], accelerator) -> dict:
    return {k: v.to(accelerator.device) for k, v in collator(features).items() if k in MODEL_INPUT_COLUMNS}


def _embed(model, inputs: dict, accelerator) -> torch.Tensor:
    with accelerator.autocast():
        return mean_pooled_embeddings(model, inputs)


def label_name_features(template: str | None, id2label: dict, tokenizer) -> list[dict] | None:
    """`template` filled in with each class name and tokenized, in class order, or `None` when not used."""
    if template is None:
        return None
    names = usable_class_names(id2label)
    if names is None or tokenizer is None:
        reason = (
            f"the class names {id2label} are numbers or placeholders"
            if names is None
            else "there is no `processing_class` to tokenize it"
        )
        logger.info(f"Class prototypes use the labeled examples only: {reason}, so `label_name_template` is unused.")
        return None
    encoded = tokenizer([template.format(name) for name in names], truncation=True)
    return [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(names))]
