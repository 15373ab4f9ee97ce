"""Labeling an unlabeled pool with a teacher, across processes (which pseudo-labels to keep: `selection.py`)."""

import contextlib
import os
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from .batching import ahead, collated
from .data import LENGTH_COLUMN, MODEL_INPUT_COLUMNS
from .selection import select_pseudo_labels  # noqa: F401  (its home before selection.py)


# A streamed (`IterableDataset`) pool is read this many batches per process at a time: enough rows that sorting them
# by length pads little, few enough that a chunk's tokens weigh nothing next to the model.
STREAM_CHUNK_BATCHES = 32


@dataclass
class PseudoLabels:
    """
    One labeling pass over a pool: for every row, in pool order, what the teacher predicts. Only these small per-row
    arrays are kept, never the logits, so a pass costs O(rows) numbers whatever the model.

    Attributes:
        labels (`np.ndarray` of `int64`, shape `(num_rows,)`):
            The argmax class.
        confidences (`np.ndarray` of `float32`, shape `(num_rows,)`):
            The top softmax probability.
        top_k_labels (`np.ndarray` of `int64`, shape `(num_rows, k)`, *optional*):
            The `k` most probable classes, most probable first (when `top_k > 0`).
        top_k_probabilities (`np.ndarray` of `float32`, shape `(num_rows, k)`, *optional*):
            Their probabilities.
    """

    labels: np.ndarray
    confidences: np.ndarray
    top_k_labels: np.ndarray | None = None
    top_k_probabilities: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_probabilities(
        cls, labels: np.ndarray, confidences: np.ndarray, probabilities: np.ndarray
    ) -> "PseudoLabels":
        """A pass that kept every class, from each row's full distribution `(num_rows, num_labels)`."""
        order = np.argsort(-probabilities, axis=1, kind="stable")
        return cls(labels, confidences, order, np.take_along_axis(probabilities, order, axis=1))

    @property
    def num_classes_kept(self) -> int:
        """How many classes per row the pass kept beside the argmax (its top-k), `0` for none."""
        return 0 if self.top_k_labels is None else self.top_k_labels.shape[1]

    def probabilities(self, num_labels: int) -> np.ndarray:
        """
        Every row's full distribution, `(num_rows, num_labels)` `float32`, from a pass that kept all classes
        (`top_k == num_labels`).
        """
        if self.top_k_labels is None or self.top_k_labels.shape[1] != num_labels:
            kept = 0 if self.top_k_labels is None else self.top_k_labels.shape[1]
            raise ValueError(
                f"The full distribution needs the top {num_labels} classes of each row; this pass kept {kept}."
            )
        probabilities = np.zeros((len(self), num_labels), dtype=np.float32)
        np.put_along_axis(probabilities, self.top_k_labels, self.top_k_probabilities, axis=1)
        return probabilities

    def columns(self) -> dict[str, pa.Array]:
        """The per-row columns as Arrow arrays (top-k as fixed-size lists), named as in the per-round files."""
        columns = {"label": pa.array(self.labels), "confidence": pa.array(self.confidences)}
        if self.top_k_labels is not None:
            k = self.top_k_labels.shape[1]
            columns["top_k_labels"] = pa.FixedSizeListArray.from_arrays(pa.array(self.top_k_labels.ravel()), k)
            columns["top_k_probabilities"] = pa.FixedSizeListArray.from_arrays(
                pa.array(self.top_k_probabilities.ravel()), k
            )
        return columns

    def to_arrow(self, selected: np.ndarray | None = None) -> pa.Table:
        """
        A table with one row per pool row: `index`, `label`, `confidence`, [`top_k_labels`, `top_k_probabilities`],
        and, given the `selected` row indices, a boolean `selected` column.
        """
        table = {"index": pa.array(np.arange(len(self), dtype=np.int64)), **self.columns()}
        if selected is not None:
            mask = np.zeros(len(self), dtype=bool)
            mask[selected] = True
            table["selected"] = pa.array(mask)
        return pa.table(table)


def write_pseudo_label_table(path: str, pseudo_labels: PseudoLabels, selected: np.ndarray | None = None):
    """
    Write a labeling pass (and its selection) to a Parquet file, for inspection, through a temporary file and a rename, so a reader never sees a
    half-written file and a crash leaves the previous one intact. Call it on one process only.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        pq.write_table(pseudo_labels.to_arrow(selected), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_pseudo_label_table(path: str) -> tuple[PseudoLabels, np.ndarray | None]:
    """Read a file written by [`write_pseudo_label_table`]: the labeling pass and the selected row indices (or `None`)."""
    table = pq.read_table(path)

    def matrix(name, dtype):
        if name not in table.column_names:
            return None
        column = table[name].combine_chunks()
        return column.flatten().to_numpy().astype(dtype).reshape(len(table), column.type.list_size)

    pseudo_labels = PseudoLabels(
        labels=table["label"].to_numpy().astype(np.int64),
        confidences=table["confidence"].to_numpy().astype(np.float32),
        top_k_labels=matrix("top_k_labels", np.int64),
        top_k_probabilities=matrix("top_k_probabilities", np.float32),
    )
    selected = np.flatnonzero(table["selected"].to_numpy()) if "selected" in table.column_names else None
    return pseudo_labels, selected


def with_prediction_columns(source, pseudo_labels: PseudoLabels):
    """
    `source` (a `Dataset` or an `IterableDataset`, in the order it was labeled) with a labeling pass's columns:
    `pseudo_label`, `confidence` and, when the pass kept them, `top_k_labels` and `top_k_probabilities`.
    """
    columns = pseudo_labels.columns()
    columns["pseudo_label"] = columns.pop("label")
    if isinstance(source, datasets.IterableDataset):

        def add_columns(batch, indices):
            return {name: values.take(indices).to_pylist() for name, values in columns.items()}

        return source.map(add_columns, with_indices=True, batched=True)
    source = source.remove_columns([c for c in columns if c in source.column_names])
    for name, values in columns.items():
        source = source.add_column(name, values)
    return source


def row_lengths(dataset: datasets.Dataset) -> np.ndarray:
    """Tokens per row of a tokenized dataset, read straight from Arrow: an `int32` per row, no Python objects."""
    if LENGTH_COLUMN in dataset.column_names:
        lengths = dataset.with_format("arrow")[LENGTH_COLUMN]
    else:
        lengths = pc.list_value_length(dataset.with_format("arrow")["input_ids"])
    return pc.cast(lengths, pa.int32()).to_numpy()


def length_sorted_shard(lengths: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """
    The row indices this process labels: all rows sorted by length, longest first, then dealt out in turn, so every
    process gets rows of about the same lengths (they finish together) and every batch pads little. Longest first
    makes a too-large batch fail at once, not at the end of the pass.
    """
    return np.argsort(-np.asarray(lengths), kind="stable")[rank::world_size]


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# Per-batch results are merged into one array every this many batches: thousands of tiny arrays would cost more in
# allocator overhead than the numbers they hold.
MERGE_EVERY_BATCHES = 64


class _ShardResults:
    """
    What one process predicts for its rows: kept on the device, copied to the CPU every [`MERGE_EVERY_BATCHES`]
    batches (one synchronization for that many batches, not one per batch), as a few numpy arrays until the single
    gather.
    """

    def __init__(self, accelerator, top_k: int):
        self.accelerator, self.top_k = accelerator, top_k
        names = ["label", "confidence"] + (["top_k_labels", "top_k_probabilities"] if top_k else [])
        self.merged: dict[str, list[np.ndarray]] = {name: [] for name in ["index", *names]}
        self.on_device: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        self.rows: list[np.ndarray] = []

    def _flush(self):
        if not self.rows:
            return
        self.merged["index"].append(np.concatenate(self.rows))
        for name, tensors in self.on_device.items():
            self.merged[name].append(torch.cat(tensors).cpu().numpy())
            tensors.clear()
        self.rows = []

    def predict(self, model, inputs: dict, rows: np.ndarray):
        """One batch of `inputs` (on the device) for the pool rows `rows`."""
        with self.accelerator.autocast():
            logits = model(**inputs).logits
        probabilities = torch.softmax(logits.float(), dim=-1)
        confidence, label = probabilities.max(dim=-1)
        values = {"label": label, "confidence": confidence}
        if self.top_k:
            top = probabilities.topk(self.top_k, dim=-1)
            values.update(top_k_labels=top.indices, top_k_probabilities=top.values)
        for name, tensor in values.items():
            self.on_device[name].append(tensor.detach())
        self.rows.append(np.asarray(rows, dtype=np.int64))
        if len(self.rows) >= MERGE_EVERY_BATCHES:
            self._flush()

    def gather(self, num_rows: int) -> PseudoLabels:
        """Gather every process's rows and put them in pool order; each row must come back exactly once."""
        accelerator = self.accelerator
        self._flush()
        # Each array is released as soon as it is copied on: a pass holds about two copies of its results at most.
        local = {}
        for name in list(self.merged):
            parts = self.merged.pop(name)
            empty_shape = (0, self.top_k) if name.startswith("top_k") else (0,)
            dtype = np.float32 if name.endswith(("confidence", "probabilities")) else np.int64
            local[name] = np.concatenate(parts) if parts else np.zeros(empty_shape, dtype=dtype)
            del parts
        if accelerator.num_processes > 1:
            # Shards differ in size (by a row per chunk at most): pad with index -1, gather, and drop the padding.
            local = {name: torch.from_numpy(array).to(accelerator.device) for name, array in local.items()}
            local = accelerator.gather(accelerator.pad_across_processes(local, dim=0, pad_index=-1))
            local = {name: tensor.cpu().numpy() for name, tensor in local.items()}
        order = local.pop("index")
        keep = order >= 0 if accelerator.num_processes > 1 else None
        if keep is not None:
            order = order[keep]
        seen = np.zeros(num_rows, dtype=bool)
        seen[order[order < num_rows]] = True
        if len(order) != num_rows or not seen.all():
            raise RuntimeError(
                f"Pseudo-labeling gathered {len(order)} rows ({len(np.unique(order))} distinct) for a pool of "
                f"{num_rows}."
            )
        del seen

        def in_pool_order(name, dtype):
            values = local.pop(name)
            if keep is not None:
                values = values[keep]
            out = np.empty((num_rows, *values.shape[1:]), dtype=dtype)
            out[order] = values
            return out

        return PseudoLabels(
            labels=in_pool_order("label", np.int64),
            confidences=in_pool_order("confidence", np.float32),
            top_k_labels=in_pool_order("top_k_labels", np.int64) if self.top_k else None,
            top_k_probabilities=in_pool_order("top_k_probabilities", np.float32) if self.top_k else None,
        )


@torch.inference_mode()
def predict_pool(
    model,
    dataset: datasets.Dataset | datasets.IterableDataset,
    collator,
    accelerator,
    batch_size: int,
    *,
    top_k: int = 0,
    desc: str = "Pseudo-labeling",
    disable_tqdm: bool = False,
) -> PseudoLabels:
    """
    The model's prediction for every row of a tokenized pool, in pool order, identical on every process.

    A `Dataset` pool is sorted by length and dealt out across processes ([`length_sorted_shard`]); each process
    labels its rows in batches padded to their longest row, and the results, which carry their row index, are
    gathered once at the end, so every row is labeled exactly once whatever the world size, and no padded duplicate
    of a distributed batch ever enters. An `IterableDataset` pool is read in stream order, in chunks that every
    process reads and splits the same way. Only the row index, label, confidence and top-k are kept per row.

    Must be called on every process. Runs under `torch.inference_mode` and `accelerator.autocast()` (fp16/bf16 when
    the accelerator uses mixed precision), with a progress bar on the main process.

    Args:
        model (`torch.nn.Module`):
            The classifier, unwrapped (no DDP: each process runs its own forward passes).
        dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]):
            Tokenized rows (`input_ids`, ...); a `length` column, if present, gives the row lengths.
        collator (`Callable`):
            Pads a list of features into a batch of tensors (e.g. `DataCollatorWithPadding`).
        accelerator ([`~accelerate.Accelerator`]):
            Gives the process layout, the device and the mixed-precision context.
        batch_size (`int`):
            Rows per forward pass on each process.
        top_k (`int`, *optional*, defaults to `0`):
            Also keep each row's `top_k` most probable classes and their probabilities.
        desc (`str`, *optional*):
            Progress bar title.
        disable_tqdm (`bool`, *optional*, defaults to `False`):
            Hide the progress bar.

    Returns:
        [`PseudoLabels`]
    """
    results = _ShardResults(accelerator, top_k)
    total = None if isinstance(dataset, datasets.IterableDataset) else len(dataset)
    progress = tqdm(total=total, desc=desc, unit="rows", disable=disable_tqdm or not accelerator.is_main_process)
    with _eval_mode(model), progress:
        if isinstance(dataset, datasets.IterableDataset):
            num_rows = _predict_stream(model, dataset, collator, accelerator, batch_size, results, progress)
        else:
            num_rows = _predict_dataset(model, dataset, collator, accelerator, batch_size, results, progress)
    return results.gather(num_rows)


def shard_batches(dataset: datasets.Dataset, collator, accelerator, batch_size: int, progress=None):
    """
    This process's rows of `dataset` ([`length_sorted_shard`]) in batches: yields `(row indices, model inputs on the
    device)`, made ahead of the consumer (see `batching.py`), and advances `progress` by the rows all processes handle
    per batch.
    """
    rows = length_sorted_shard(row_lengths(dataset), accelerator.process_index, accelerator.num_processes)
    batches = ahead(collated(dataset, rows, batch_size, collator), accelerator.device)
    for batch_rows, inputs in batches:
        yield batch_rows, inputs
        if progress is not None:
            progress.update(min(len(batch_rows) * accelerator.num_processes, progress.total - progress.n))


def _predict_dataset(model, dataset, collator, accelerator, batch_size, results, progress) -> int:
    for batch_rows, inputs in shard_batches(dataset, collator, accelerator, batch_size, progress):
        results.predict(model, inputs, batch_rows)
    return len(dataset)


def _predict_stream(model, dataset, collator, accelerator, batch_size, results, progress) -> int:
    rank, world_size = accelerator.process_index, accelerator.num_processes
    offset = 0
    for chunk in dataset.iter(batch_size=batch_size * world_size * STREAM_CHUNK_BATCHES):
        input_ids = chunk["input_ids"]
        mine = np.arange(rank, len(input_ids), world_size)
        mine = mine[np.argsort([-len(input_ids[i]) for i in mine], kind="stable")]
        keys = [k for k in chunk if k in MODEL_INPUT_COLUMNS]
        for start in range(0, len(mine), batch_size):
            batch_rows = mine[start : start + batch_size]
            features = [{k: chunk[k][i] for k in keys} for i in batch_rows]
            inputs = {k: v.to(accelerator.device) for k, v in collator(features).items() if k in MODEL_INPUT_COLUMNS}
            results.predict(model, inputs, offset + batch_rows)
        offset += len(input_ids)
        progress.update(len(input_ids))
    return offset


# The names scripts reading the per-round files knew them by, before the checkpoint's own files moved to
# `checkpointing.save_selection` / `load_selection`.
save_pseudo_labels = write_pseudo_label_table
load_pseudo_labels = read_pseudo_label_table
