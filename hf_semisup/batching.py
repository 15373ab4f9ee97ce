"""
Batches of model inputs for the labeling passes (the teacher's, the class prototypes'), made ahead of the model.

A pool's rows are read as Arrow tables (one pyarrow `take` per few dozen batches, from the memory-mapped dataset) and padded with numpy
straight from their flat token buffers, as `DataCollatorWithPadding` would pad them but without a Python object per
row; a background thread makes the next batches while the model runs on the current one, in pinned memory when the
batches go to an accelerator, which they reach through non-blocking copies. A collator of another kind is called as
it is, on the same thread.
"""

import queue
import threading

import numpy as np
import pyarrow as pa
import torch
from transformers import DataCollatorWithPadding

from .compat import take_rows
from .data import MODEL_INPUT_COLUMNS


# Batches made ahead of the one the model runs on: enough to hide a slow batch, few enough to hold little memory.
PREFETCH_BATCHES = 4
# Rows are read this many batches at a time (one Arrow `take`), then sliced: a take per batch costs more than the
# padding, and a chunk of a few thousand rows weighs little.
TAKE_BATCHES = 32


class ArrowPadder:
    """
    Pads a table of tokenized rows into batch tensors exactly as `DataCollatorWithPadding(tokenizer)` pads the same
    rows given as features: to the longest row (rounded up to `pad_to_multiple_of`), on the tokenizer's side, input ids
    with its padding token, token type ids with its padding type id, an attention mask of ones for real tokens.
    """

    def __init__(self, pad_token_id: int, pad_token_type_id: int, padding_side: str, multiple_of, mask: bool):
        self.pad_token_id, self.pad_token_type_id = pad_token_id, pad_token_type_id
        self.padding_side, self.multiple_of, self.mask = padding_side, multiple_of, mask

    @classmethod
    def for_collator(cls, collator) -> "ArrowPadder | None":
        """The padder that does what `collator` does, or `None` when it is not a plain `DataCollatorWithPadding`."""
        if type(collator) is not DataCollatorWithPadding:
            return None
        tokenizer = collator.tokenizer
        if (
            collator.padding not in (True, "longest")
            or collator.max_length is not None
            or collator.return_tensors != "pt"
            or getattr(tokenizer, "pad_token_id", None) is None
            or tokenizer.padding_side not in ("left", "right")
        ):
            return None
        mask = "attention_mask" in getattr(tokenizer, "model_input_names", ["attention_mask"])
        return cls(
            tokenizer.pad_token_id,
            getattr(tokenizer, "pad_token_type_id", 0),
            tokenizer.padding_side,
            collator.pad_to_multiple_of,
            mask,
        )

    @staticmethod
    def can_pad(table: pa.Table) -> bool:
        """Whether every column is a list of token ids (not, e.g., a fixed-size list or a tensor extension type)."""
        return all(pa.types.is_list(f.type) or pa.types.is_large_list(f.type) for f in table.schema)

    def __call__(self, table: pa.Table) -> dict[str, torch.Tensor]:
        """The whole `table` as one batch."""
        return self.pad(flat_columns(table), 0, table.num_rows)

    def pad(self, columns: dict[str, tuple[np.ndarray, np.ndarray]], start: int, stop: int) -> dict[str, torch.Tensor]:
        """Rows `start:stop` of [`flat_columns`] as one padded batch."""
        ids, offsets = columns["input_ids"]
        bounds = offsets[start : stop + 1]
        lengths = np.diff(bounds)
        width = int(lengths.max(initial=0))
        if self.multiple_of and width % self.multiple_of:
            width += self.multiple_of - width % self.multiple_of
        positions = np.arange(width)
        if self.padding_side == "right":
            real = positions[None, :] < lengths[:, None]
        else:
            real = positions[None, :] >= (width - lengths)[:, None]
        batch = {"input_ids": _fill(ids, bounds, real, self.pad_token_id)}
        if "token_type_ids" in columns:
            types, type_offsets = columns["token_type_ids"]
            batch["token_type_ids"] = _fill(types, type_offsets[start : stop + 1], real, self.pad_token_type_id)
        if self.mask or "attention_mask" in columns:
            batch["attention_mask"] = torch.from_numpy(real.astype(np.int64))
        return batch


def flat_columns(table: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each list column of `table` as `(flat values, offsets)` numpy arrays, without copying where Arrow allows."""
    columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        columns[name] = (column.values.to_numpy(zero_copy_only=False), column.offsets.to_numpy())
    return columns


def _fill(values: np.ndarray, bounds: np.ndarray, real: np.ndarray, fill: int) -> torch.Tensor:
    out = np.full(real.shape, fill, dtype=np.int64)
    out[real] = values[bounds[0] : bounds[-1]]  # row-major: each row's tokens, in order, into its real positions
    return torch.from_numpy(out)


def collated(dataset, rows: np.ndarray, batch_size: int, collator):
    """
    `(row indices, batch tensors)` for `rows` of a tokenized `Dataset`, `batch_size` at a time: read [`TAKE_BATCHES`]
    batches at a time (one Arrow `take`), padded by [`ArrowPadder`] when it does what `collator` does, else given to
    `collator` as features.
    """
    columns = [c for c in dataset.column_names if c in MODEL_INPUT_COLUMNS]
    padder = ArrowPadder.for_collator(collator)
    chunk = batch_size * TAKE_BATCHES
    for chunk_start in range(0, len(rows), chunk):
        chunk_rows = rows[chunk_start : chunk_start + chunk]
        table = take_rows(dataset, columns, chunk_rows)
        if padder is not None and padder.can_pad(table):
            flat = flat_columns(table)
            for start in range(0, len(chunk_rows), batch_size):
                yield chunk_rows[start : start + batch_size], padder.pad(flat, start, start + batch_size)
            continue
        for start in range(0, len(chunk_rows), batch_size):
            features = table.slice(start, batch_size).to_pylist()
            batch = {k: v for k, v in collator(features).items() if k in MODEL_INPUT_COLUMNS}
            yield chunk_rows[start : start + batch_size], batch


def ahead(batches, device: torch.device, depth: int = PREFETCH_BATCHES, threaded: bool | None = None):
    """
    The items of `batches` (`(rows, tensors)`), made by a background thread up to `depth` ahead of the consumer, their
    tensors pinned when they go to an accelerator; the consumer gets them on `device` (non-blocking copies).
    An error in the thread is raised in the consumer. `threaded=None` uses the thread unless `device` is the CPU,
    where the batches are made in turn with the model's: the model runs on those cores, and a thread making batches
    beside it only contends for them and for the GIL.
    """
    pin = device.type == "cuda"
    if not (device.type != "cpu" if threaded is None else threaded):
        yield from batches
        return
    items: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def produce():
        try:
            for rows, tensors in batches:
                if pin:
                    tensors = {k: v.pin_memory() for k, v in tensors.items()}
                while not stop.is_set():
                    try:
                        items.put((rows, tensors), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as error:  # handed to the consumer, which raises it
            items.put(error)

    thread = threading.Thread(target=produce, name="hf-semisup-batches", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            rows, tensors = item
            yield rows, {k: v.to(device, non_blocking=pin) for k, v in tensors.items()}
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue, then let it end
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)
