"""BertConfig: the hyper-parameters of a BERT encoder, stored as Hugging Face's config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Published BERT sizes (Devlin et al. 2018; Turc et al. 2019 for the small ones):
# name -> (layers, hidden, heads). The feed-forward layer is always 4 x hidden.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # "gelu" is the exact (erf) GELU, as in Google's BERT
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # segment A / segment B
    initializer_range: float = 0.02  # std of the normal init of every weight matrix
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0  # its word-embedding row gets no gradient (as in Hugging Face)
    # Heads. num_labels is not written to config.json: Hugging Face derives it
    # from id2label, whose keys are strings there ({"0": "negative"}).
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None  # regression | single_label_classification | multi_label_classification
    classifier_dropout: float | None = None  # None: use hidden_dropout_prob
    # Every other key of config.json (architectures, model_type, ...), kept so
    # that reading and writing a config loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # config.json is hand-edited: catch "768" or 0.5 layers early
            v = getattr(self, f.name)
            if (f.type == "int" and (not isinstance(v, int) or isinstance(v, bool))) or \
                    (f.type == "float" and (not isinstance(v, (int, float)) or isinstance(v, bool))):
                raise ValueError(f"config field {f.name} must be {f.type}, got {v!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.id2label is not None:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        if self.label2id is not None:
            self.label2id = {k: int(v) for k, v in self.label2id.items()}
        pos = self.extra.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"position_embedding_type {pos!r} is not supported (only 'absolute')")
        if self.extra.get("is_decoder"):
            raise ValueError("is_decoder=true configs are not supported: bertkit is an encoder")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "BertConfig":
        """A published BERT size (tiny, mini, small, medium, base, large), with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        layers, hidden, heads = PRESETS[name]
        fields = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                      intermediate_size=4 * hidden)
        return cls(**{**fields, **overrides})

    def replace(self, **overrides: Any) -> "BertConfig":
        """A copy with some fields changed; num_labels=n without id2label resets the labels."""
        if "num_labels" in overrides and "id2label" not in overrides and overrides["num_labels"] != self.num_labels:
            overrides.setdefault("id2label", None)
            overrides.setdefault("label2id", None)
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BertConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name not in ("extra", "num_labels", "id2label", "label2id") and getattr(self, f.name) is not None:
                d[f.name] = getattr(self, f.name)
        if self.id2label is not None or self.num_labels != 2:
            id2label = self.id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
            d["id2label"] = {str(i): label for i, label in id2label.items()}
            d["label2id"] = self.label2id or {label: i for i, label in id2label.items()}
        d.setdefault("model_type", "bert")
        return dict(sorted(d.items()))

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_json(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
