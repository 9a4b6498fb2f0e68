"""Masked-LM targets made at batch time (dynamic masking) and the pre-training batch source.

Each epoch masks each instance afresh (RoBERTa's dynamic masking) with an RNG seeded from
(seed, epoch, batch number), so a batch can be rebuilt exactly from its position alone:
that is what makes resuming and multi-process training reproduce a single run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from bertkit.batching import length_batches
from bertkit.data.shards import PretrainingData


@dataclass
class MaskingConfig:
    probability: float = 0.15  # share of the tokens that become prediction targets
    max_predictions: int = 20  # cap per sequence (Google: 20 at 128 tokens, 80 at 512)
    whole_word: bool = False  # mask all pieces of a word together ("##" pieces follow their head)
    mask_fraction: float = 0.8  # targets replaced by [MASK]
    random_fraction: float = 0.1  # targets replaced by a random token; the rest stay unchanged


class Masker:
    """Chooses MLM targets of one sequence, as Google's create_masked_lm_predictions does."""

    def __init__(self, cfg: MaskingConfig, vocab: dict[str, int], special_ids: set[int] | frozenset[int],
                 mask_id: int):
        if not 0 < cfg.probability < 1:
            raise ValueError(f"masking probability must be in (0, 1), got {cfg.probability}")
        if cfg.max_predictions < 1:
            raise ValueError(f"max_predictions must be >= 1, got {cfg.max_predictions}")
        self.cfg = cfg
        self.mask_id = mask_id
        size = max(vocab.values()) + 1
        self.special = np.zeros(size, dtype=bool)
        self.special[list(special_ids)] = True
        self.continuation = np.zeros(size, dtype=bool)  # "##" pieces: never start a word
        for token, i in vocab.items():
            self.continuation[i] = token.startswith("##")
        self.replacements = np.flatnonzero(~self.special)  # random replacements are never special tokens

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sequence: ids [seq] -> (masked ids [seq], positions [k], original ids [k]), positions ascending."""
        masked, positions, labels = self.batch(ids[None], np.array([len(ids)]), rng)
        n = int((labels[0] != -100).sum())
        return masked[0], positions[0, :n], labels[0, :n]

    def batch(self, ids: np.ndarray, lengths: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A padded batch at once: ids [batch, seq] (real tokens first, then padding), lengths [batch] ->
        (masked ids [batch, seq], positions [batch, max_predictions] ascending then 0-padded,
        original ids at those positions [batch, max_predictions], -100-padded).

        Whole arrays instead of a loop over sequences: a GPU waits for the batch builder between
        steps (BENCHMARKS.md, Pre-training: batch builder).
        """
        b, seq = ids.shape
        k = self.cfg.max_predictions
        real = np.arange(seq) < lengths[:, None]  # [batch, seq]
        candidate = real & ~self.special[ids]
        n_predict = np.minimum(k, np.maximum(1, np.rint(lengths * self.cfg.probability).astype(np.int64)))
        n_predict = np.minimum(n_predict, candidate.sum(1))  # a short sequence may have fewer candidates
        if self.cfg.whole_word:
            chosen = np.full((b, k), seq)
            for r in range(b):
                words = self._whole_words(ids[r], candidate[r], n_predict[r], rng)
                chosen[r, :len(words)] = words
        else:
            # A uniform random subset of each row's candidates: the n smallest of random keys.
            keys = np.where(candidate, rng.random((b, seq)), 2.0)
            chosen = np.argsort(keys, axis=1)[:, :k]
            chosen = np.where(np.arange(chosen.shape[1]) < n_predict[:, None], chosen, seq)
        positions = np.sort(chosen, axis=1)  # targets ascending, then `seq` for "none"
        if positions.shape[1] < k:  # sequences shorter than max_predictions
            positions = np.pad(positions, ((0, 0), (0, k - positions.shape[1])), constant_values=seq)
        target = positions < seq  # [batch, k]
        rows = np.broadcast_to(np.arange(b)[:, None], target.shape)
        rows, cols = rows[target], positions[target]
        labels = np.full((b, k), -100, dtype=np.int64)
        labels[target] = ids[rows, cols]
        masked = ids.copy()
        r = rng.random(len(cols))
        to_mask = r < self.cfg.mask_fraction
        to_random = (r >= self.cfg.mask_fraction) & (r < self.cfg.mask_fraction + self.cfg.random_fraction)
        masked[rows[to_mask], cols[to_mask]] = self.mask_id
        masked[rows[to_random], cols[to_random]] = rng.choice(self.replacements, int(to_random.sum()))
        return masked, np.where(target, positions, 0), labels

    def _whole_words(self, ids: np.ndarray, candidate: np.ndarray, n_predict: int,
                     rng: np.random.Generator) -> list[int]:
        """Positions of whole words (all their pieces), in random word order, while they fit n_predict."""
        candidates = np.flatnonzero(candidate)
        # A word starts at a non-"##" piece, or wherever the previous position is not a candidate.
        follows = np.r_[False, candidates[1:] == candidates[:-1] + 1]
        starts = np.flatnonzero(~self.continuation[ids[candidates]] | ~follows)
        words = np.split(candidates, starts[1:])  # [positions of one word, ...]
        chosen: list[int] = []
        for w in rng.permutation(len(words)):
            if len(chosen) >= n_predict:
                break
            if len(chosen) + len(words[w]) <= n_predict:
                chosen.extend(words[w].tolist())
        return chosen


class MaskedBatches:
    """Batches of masked pre-training instances: `set_epoch`, `len`, and batch `i` by index.

    Batches group instances of similar length (batching.length_batches), shuffled per epoch when
    `shuffle`; MLM targets are padded to max_predictions (positions with 0, labels with -100).
    """

    def __init__(self, data: PretrainingData, indices: list[int], batch_size: int, masker: Masker, *,
                 seed: int = 0, shuffle: bool = True):
        self.data, self.indices, self.batch_size, self.masker = data, indices, batch_size, masker
        self.seed, self.shuffle = seed, shuffle
        self.lengths = data.lengths()[indices].tolist()
        self.epoch = -1
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.order = length_batches(self.lengths, self.batch_size, shuffle=self.shuffle,
                                        seed=self.seed + epoch)

    def __len__(self) -> int:
        return len(self.order)

    def fingerprint(self) -> str:
        """What these batches are made of: the prepared data, which instances, the masking and the seed.
        The engine refuses to resume a run on batches with another fingerprint."""
        h = hashlib.sha1(self.data.fingerprint().encode())
        h.update(np.asarray(self.indices, dtype=np.int64).tobytes())
        h.update(json.dumps([dataclasses.asdict(self.masker.cfg), self.seed, self.shuffle]).encode())
        return h.hexdigest()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Batch i of this epoch, as collate would stack it (padding 0, int64), built as whole arrays."""
        rng = np.random.default_rng([self.seed, self.epoch, i])
        instances = [self.data[self.indices[j]] for j in self.order[i]]
        lengths = np.array([len(ids) for ids, _, _ in instances])
        ids = np.zeros((len(instances), lengths.max()), dtype=np.int64)  # [batch, seq]
        for row, (x, _, _) in enumerate(instances):
            ids[row, : len(x)] = x
        a_end = np.array([a for _, a, _ in instances])
        masked, positions, labels = self.masker.batch(ids, lengths, rng)
        col = np.arange(ids.shape[1])
        real = col < lengths[:, None]
        return {
            "input_ids": torch.from_numpy(masked),
            "token_type_ids": torch.from_numpy((real & (col >= a_end[:, None])).astype(np.int64)),
            "attention_mask": torch.from_numpy(real.astype(np.int64)),
            "masked_positions": torch.from_numpy(positions),
            "masked_lm_labels": torch.from_numpy(labels),
            "next_sentence_label": torch.tensor([nsp for _, _, nsp in instances], dtype=torch.long),
        }

    def __iter__(self):
        return (self[i] for i in range(len(self)))
