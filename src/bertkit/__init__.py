"""bertkit: BERT from first principles.

    from bertkit import Tokenizer, BertModel, Embedder
    tok = Tokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    model = BertModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    out = model(**tok(["a sentence", "another one"], padding=True, return_tensors="pt"))

The names below are imported on first use, so `import bertkit.tokenizer` (pure Python) does
not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

_EXPORTS = {
    "BertConfig": "bertkit.config",
    "Tokenizer": "bertkit.tokenizer",
    "BertModel": "bertkit.heads",
    "BertForPreTraining": "bertkit.heads",
    "BertForMaskedLM": "bertkit.heads",
    "BertForNextSentencePrediction": "bertkit.heads",
    "BertForSequenceClassification": "bertkit.heads",
    "BertForTokenClassification": "bertkit.heads",
    "BertForQuestionAnswering": "bertkit.heads",
    "Embedder": "bertkit.infer",
    "embed": "bertkit.infer",
    "finetune": "bertkit.tasks.finetune",
    "evaluate": "bertkit.tasks.finetune",
    "predict": "bertkit.tasks.finetune",
    "FinetuneConfig": "bertkit.tasks.settings",
    "Predictor": "bertkit.tasks.predictor",
    "pretrain": "bertkit.pretrain",
    "resolve": "bertkit.hub",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bertkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on demand
    from bertkit.config import BertConfig
    from bertkit.heads import (
        BertForMaskedLM,
        BertForNextSentencePrediction,
        BertForPreTraining,
        BertForQuestionAnswering,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertModel,
    )
    from bertkit.hub import resolve
    from bertkit.infer import Embedder, embed
    from bertkit.pretrain import pretrain
    from bertkit.tasks.finetune import evaluate, finetune, predict
    from bertkit.tasks.predictor import Predictor
    from bertkit.tasks.settings import FinetuneConfig
    from bertkit.tokenizer import Tokenizer
