"""Configuration: BertConfig (a BERT's hyper-parameters, stored as Hugging Face's config.json),
and the one loader of run settings (pre-training, fine-tuning, the demo): dataclasses from
YAML/JSON files plus dotted `key=value` overrides, every value checked against its field's type.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from bertkit.io import write_json

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
    def preset(cls, name: str, **overrides: Any) -> BertConfig:
        """A published BERT size (tiny, mini, small, medium, base, large), with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        layers, hidden, heads = PRESETS[name]
        fields = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                      intermediate_size=4 * hidden)
        return cls(**{**fields, **overrides})

    def replace(self, **overrides: Any) -> BertConfig:
        """A copy with some fields changed; num_labels=n without id2label resets the labels."""
        if "num_labels" in overrides and "id2label" not in overrides and overrides["num_labels"] != self.num_labels:
            overrides.setdefault("id2label", None)
            overrides.setdefault("label2id", None)
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
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
    def from_json(cls, path: str | Path) -> BertConfig:
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
        write_json(path / "config.json" if path.is_dir() else path, self.to_dict())


# ---------------------------------------------------------------------------- run settings

C = TypeVar("C")


def load_settings(cls: type[C], path: str | Path | None = None, overrides: typing.Iterable[str] = (),
                  base: C | None = None) -> C:
    """Dataclass `cls` from `base` (default: cls()), then a YAML/JSON file, then `key=value` overrides.

    Nested dataclasses are sections (`train.lr=1e-4`); values are parsed as YAML except for
    string fields, which take the text as written. Unknown keys and values of the wrong type are
    errors that name the key and what it accepts.
    """
    tree = dataclasses.asdict(base if base is not None else cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        try:
            text = path.read_text(encoding="utf-8")
            loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                             f"{str(e).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        _merge(tree, loaded or {}, cls, str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value")
        key = key.strip()
        hint = _field_type(cls, key)
        if _is_text(hint):  # text as written; null only where None is allowed
            value = None if hint is not str and raw in ("null", "none", "None", "~") else raw
        else:
            value = None if raw == "" else yaml.safe_load(raw)
        _merge(tree, _nest(key, value), cls, "override")
    return build(cls, tree)


def build(cls: type[C], values: Mapping, where: str = "") -> C:
    """Dataclass `cls` from a mapping (sections as nested mappings), each value type-checked."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{where or 'settings'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        full = f"{where}.{key}" if where else key
        if key not in hints:
            raise ValueError(f"unknown setting {full!r}; valid keys{' in ' + where if where else ''}: "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        kwargs[key] = _check(value, hints[key], full)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where + ': ' if where else ''}{e}") from None


def _merge(tree: dict, new: Mapping, cls: type, source: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in new.items():
        if key not in hints:
            raise ValueError(f"{source}: unknown setting {key!r}; valid keys: "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, Mapping) and isinstance(tree.get(key), dict):
            _merge(tree[key], value, hints[key], f"{source}: {key}")
        elif typing.get_origin(hints[key]) is dict and isinstance(value, Mapping) and isinstance(tree.get(key), dict):
            tree[key] = {**tree[key], **value}  # mapping fields take keys one by one
        else:
            tree[key] = value


def _nest(dotted: str, value: Any) -> dict:
    *parents, last = dotted.split(".")
    tree: dict = {last: value}
    for p in reversed(parents):
        tree = {p: tree}
    return tree


def _field_type(cls: type, dotted: str) -> Any:
    hint: Any = cls
    for part in dotted.split("."):
        if typing.get_origin(hint) is dict:  # a key inside a mapping field (model_overrides.hidden_dropout_prob)
            hint = typing.get_args(hint)[1] if typing.get_args(hint) else Any
            continue
        hints = typing.get_type_hints(hint) if dataclasses.is_dataclass(hint) else {}
        if part not in hints:
            valid = ", ".join(f.name for f in dataclasses.fields(hint)) if dataclasses.is_dataclass(hint) else ""
            raise ValueError(f"unknown setting {dotted!r}" + (f"; valid keys: {valid}" if valid else ""))
        hint = hints[part]
    return hint


def _is_text(hint: Any) -> bool:
    return hint is str or set(typing.get_args(hint)) == {str, type(None)}


def _check(value: Any, hint: Any, key: str) -> Any:
    """`value` if it fits type `hint` (numbers parsed from YAML's strings), else a one-line error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _check(value, option, key)
            except ValueError as e:
                errors.append(str(e))
        prefix = f"setting {key!r}: {value!r} is not "  # "... is not true or false, nor one of auto"
        if len(errors) == 1 or not all(e.startswith(prefix) for e in errors):
            raise ValueError(errors[0])
        raise ValueError(prefix + ", nor ".join(e.removeprefix(prefix) for e in errors))
    if hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ValueError(f"setting {key!r}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key) if not dataclasses.is_dataclass(value) else value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"setting {key!r}: {value!r} is not true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"setting {key!r}: {value!r} is not a whole number")
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"setting {key!r}: {value!r} is not a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"setting {key!r}: {value!r} is not a string")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"setting {key!r}: {value!r} is not a list of {len(args)} values")
        return tuple(_check(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"setting {key!r}: {value!r} is not a mapping")
        return dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"setting {key!r}: {value!r} is not a list")
        return [_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    return value
