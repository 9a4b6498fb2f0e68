"""Batching for fine-tuning, evaluation and inference (pre-training batches are built as whole
arrays in data/masking.py, with the same length grouping).

Examples are grouped by length so that each batch is padded only to its own
longest member: on a CPU every padded position is wasted matrix-multiply work.
A feature is a dict of plain Python values (lists of ints for per-token fields,
numbers for per-example fields); `collate` turns a list of them into tensors.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# Value used to pad each per-token field. Labels pad with -100, the value
# torch's cross-entropy ignores, so padded positions never reach a loss.
PAD_VALUES = {
    "input_ids": 0,
    "token_type_ids": 0,
    "attention_mask": 0,
    "labels": -100,
    "special_tokens_mask": 1,
}


@dataclass
class Prepared:
    """One input made ready for the model: what a model's `prepare(inputs)` returns, one per
    input, and its `run(prepared)` takes. A server tokenizes each request as it arrives and
    runs many requests' Prepared together (bertkit.serve).

    features: model inputs (dicts `collate` stacks): one, or one per window of a long input
    example: the input as the model's kind reads it (what maps the outputs back to an answer)
    positions: per feature, what else mapping back needs (word starts, character offsets)
    truncated: tokens past max_length were cut off
    n_tokens: word pieces over all features (what a batcher budgets by)
    """

    features: list[dict]
    example: Any = None
    positions: list = field(default_factory=list)
    truncated: bool = False
    n_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_tokens = sum(len(f["input_ids"]) for f in self.features)


def sorted_batches(prepared: Sequence[Prepared], batch_size: int,
                   device: torch.device | str = "cpu") -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """The one inference path's batches: every feature of `prepared`, grouped by length (longest
    first, padding bounded), collated and moved to `device` -> (indices into the flat feature list, batch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    features = [f for p in prepared for f in p.features]
    for idx in padding_bounded_batches([len(f["input_ids"]) for f in features], batch_size):
        yield idx, {k: v.to(device) for k, v in collate([features[i] for i in idx]).items()}


def padding_bounded_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices longest first, cut into batches of at most batch_size, each also closed before its
    padded size (longest x count) would exceed twice its real tokens.

    lengths [256, 250, 12, 11, 10, 9, 8] with batch_size 32 -> [[0, 1, 2, 3], [4, 5, 6]]: a few long
    inputs among many short ones (a server's queue, a corpus window) no longer pad them all.
    """
    batches: list[list[int]] = []
    batch: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batch and (len(batch) == batch_size or lengths[batch[0]] * (len(batch) + 1) > 2 * (real + lengths[i])):
            batches.append(batch)
            batch, real = [], 0
        batch.append(i)
        real += lengths[i]
    if batch:
        batches.append(batch)
    return batches


def length_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    bucket_batches: int = 50,
) -> list[list[int]]:
    """Index batches whose members have similar lengths.

    Without shuffle (evaluation, inference) indices are sorted longest first,
    so the largest batch is met first and memory use is known at once.
    With shuffle (training) the order is random but local: a random permutation
    is cut into buckets of `bucket_batches` batches, each bucket is sorted by
    length and cut into batches, and the batches are shuffled.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: -lengths[i])
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    bucket = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, n, bucket):
        chunk = sorted(order[start : start + bucket], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(features: Sequence[dict], pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Stack features into tensors, padding per-token fields to the batch's longest."""
    if not features:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, torch.Tensor] = {}
    for key, first in features[0].items():
        if isinstance(first, (list, tuple)):
            width = max(len(f[key]) for f in features)
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
            pad = PAD_VALUES.get(key, 0)
            rows = [list(f[key]) + [pad] * (width - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        elif isinstance(first, float):
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.float)
        elif isinstance(first, int):
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
        # Anything else (ids, raw text, offsets) stays out of the tensors.
    return batch


class Batches:
    """Re-iterable batches over a list of features; `set_epoch` reshuffles."""

    def __init__(self, features: Sequence[dict], batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, length_key: str = "input_ids", pad_to_multiple_of: int = 1):
        self.features = features
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.pad_to_multiple_of = pad_to_multiple_of
        self.lengths = [len(f[length_key]) for f in features]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def index_batches(self) -> list[list[int]]:
        return length_batches(self.lengths, self.batch_size, shuffle=self.shuffle,
                              seed=self.seed + self.epoch)

    def __len__(self) -> int:
        return -(-len(self.features) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for idx in self.index_batches():
            yield collate([self.features[i] for i in idx], self.pad_to_multiple_of)
