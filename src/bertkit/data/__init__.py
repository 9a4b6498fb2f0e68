"""Pre-training data: corpus reading (corpus), NSP instances (instances), shards on disk
(shards, `bertkit prepare`), and masking at batch time (masking)."""

from bertkit.data.corpus import CorpusStats, read_documents, split_sentences
from bertkit.data.shards import PretrainingData, PretrainingParts, open_prepared, prepare

__all__ = ["CorpusStats", "read_documents", "split_sentences", "MaskedBatches", "Masker", "MaskingConfig",
           "PretrainingData", "PretrainingParts", "open_prepared", "prepare"]

_MASKING = ("MaskedBatches", "Masker", "MaskingConfig")


def __getattr__(name: str):
    # Masking needs torch, imported on first use: `bertkit prepare`'s worker processes, which
    # import this package to build shards, then start without it.
    if name in _MASKING:
        from bertkit.data import masking

        return getattr(masking, name)
    raise AttributeError(f"module 'bertkit.data' has no attribute {name!r}")
