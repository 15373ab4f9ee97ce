"""
The first teacher from sentence embeddings: class prototypes in the pretrained encoder's own embedding space.

A classifier fine-tuned on a few labeled examples is a weak, badly calibrated teacher: on movie_snippets with 8 labels
per class, the MiniLM fine-tuned in round 0 labels the pool at 0.58 accuracy, and even its most confident fifth is only
0.62 right, so the students of later rounds learn its mistakes. The same pretrained encoder, untouched, already places
texts of a class near each other: scoring each text by the cosine similarity of its mean-pooled embedding to each
class's prototype (the mean embedding of the class's labeled examples, plus the embedding of a prompt naming the class,
as SetFit's templated zero-shot examples do) labels a 4,000-row pool at 0.635 and its most confident fifth at 0.791
(three seeds; `benchmarks/label_efficiency.py`, README). [`PrototypeClassifier`] is that teacher, shaped like a sequence
classifier so that [`~hf_semisup.pseudo_labeling.predict_pool`] runs it like any other.
"""

import logging
import re

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import SequenceClassifierOutput

from .data import MODEL_INPUT_COLUMNS
from .pseudo_labeling import shard_batches


logger = logging.getLogger(__name__)

FIRST_TEACHERS = ("embeddings", "model")

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
    disable_tqdm: bool = False,
) -> torch.Tensor:
    """
    One unit-length prototype per class, `(num_labels, hidden)`: the mean embedding of the class's labeled rows, plus,
    given `name_features` (one tokenized prompt per class, in class order), the prompt's embedding with equal weight.

    Each process embeds its share of `labeled` (a tokenized `Dataset` with `labels`); the per-class sums are added
    across processes, so every process returns the same prototypes. Must be called on every process.
    """
    device = accelerator.device
    labels = np.asarray(labeled["labels"])
    sums, counts = None, torch.zeros(num_labels, device=device)
    was_training = model.training
    model.eval()
    progress = tqdm(
        total=len(labeled),
        desc="Class prototypes",
        unit="rows",
        disable=disable_tqdm or not accelerator.is_main_process,
    )
    try:
        with progress:
            for batch_rows, features in shard_batches(labeled, accelerator, batch_size, progress):
                embeddings = _embed(model, collator, features, accelerator)
                if sums is None:
                    sums = torch.zeros(num_labels, embeddings.shape[-1], device=device)
                batch_labels = torch.as_tensor(labels[batch_rows], device=device)
                sums.index_add_(0, batch_labels, embeddings)
                counts += torch.bincount(batch_labels, minlength=num_labels).float()
            names = _embed(model, collator, name_features, accelerator) if name_features else None
    finally:
        model.train(was_training)
    if sums is None:  # a process with no labeled rows still takes part in the reduction
        width = names.shape[-1] if names is not None else model.config.hidden_size
        sums = torch.zeros(num_labels, width, device=device)
    if accelerator.num_processes > 1:
        sums, counts = accelerator.reduce(sums, reduction="sum"), accelerator.reduce(counts, reduction="sum")
    prototypes = nn.functional.normalize(sums / counts.clamp(min=1.0).unsqueeze(-1), dim=-1)
    if names is not None:
        prototypes = nn.functional.normalize(prototypes + names, dim=-1)
    return prototypes


def _embed(model, collator, features: list[dict], accelerator) -> torch.Tensor:
    inputs = {k: v.to(accelerator.device) for k, v in collator(features).items() if k in MODEL_INPUT_COLUMNS}
    with accelerator.autocast():
        return mean_pooled_embeddings(model, inputs)
