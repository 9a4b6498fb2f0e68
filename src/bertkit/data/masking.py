"""Masked-LM targets made at batch time (dynamic masking) and the pre-training batch source.

Each epoch masks each instance afresh (RoBERTa's dynamic masking) with an RNG seeded from
(seed, epoch, batch number), so a batch can be rebuilt exactly from its position alone:
that is what makes resuming and multi-process training reproduce a single run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bertkit.batching import collate, length_batches
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
        """ids [seq] -> (masked ids [seq], positions [k], original ids [k]), positions ascending."""
        candidates = np.flatnonzero(~self.special[ids])
        n_predict = min(self.cfg.max_predictions, max(1, int(round(len(ids) * self.cfg.probability))))
        if self.cfg.whole_word:
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
            positions = np.sort(np.asarray(chosen, dtype=np.int64))
        else:
            positions = np.sort(rng.permutation(candidates)[:n_predict])
        labels = ids[positions].copy()
        masked = ids.copy()
        r = rng.random(len(positions))
        to_mask = r < self.cfg.mask_fraction
        to_random = (r >= self.cfg.mask_fraction) & (r < self.cfg.mask_fraction + self.cfg.random_fraction)
        masked[positions[to_mask]] = self.mask_id
        masked[positions[to_random]] = rng.choice(self.replacements, int(to_random.sum()))
        return masked, positions, labels


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

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        k = self.masker.cfg.max_predictions
        features = []
        for j in self.order[i]:
            ids, a_end, is_random_next = self.data[self.indices[j]]
            masked, positions, labels = self.masker(ids, rng)
            pad = k - len(positions)
            features.append({
                "input_ids": masked.tolist(),
                "token_type_ids": [0] * a_end + [1] * (len(ids) - a_end),
                "attention_mask": [1] * len(ids),
                "masked_positions": positions.tolist() + [0] * pad,
                "masked_lm_labels": labels.tolist() + [-100] * pad,
                "next_sentence_label": is_random_next,
            })
        return collate(features)

    def __iter__(self):
        return (self[i] for i in range(len(self)))
