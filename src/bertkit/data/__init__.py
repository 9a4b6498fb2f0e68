"""Pre-training data: corpus reading (corpus), NSP instances (instances), shards on disk
(shards, `bertkit prepare`), and masking at batch time (masking)."""

from bertkit.data.corpus import CorpusStats, read_documents, split_sentences
from bertkit.data.masking import MaskedBatches, Masker, MaskingConfig
from bertkit.data.shards import PretrainingData, PretrainingParts, open_prepared, prepare

__all__ = ["CorpusStats", "read_documents", "split_sentences", "MaskedBatches", "Masker", "MaskingConfig",
           "PretrainingData", "PretrainingParts", "open_prepared", "prepare"]
