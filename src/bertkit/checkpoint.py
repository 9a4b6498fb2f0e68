"""Hugging Face checkpoints in and out: config.json + model.safetensors (+ tokenizer files).

bertkit names its parameters its own way (nanoGPT style, with one fused QKV
projection per layer); RENAMES below is the whole correspondence with
Hugging Face's names. Loading never runs pickled code: safetensors, or
torch.load(weights_only=True) for old pytorch_model.bin files. Nothing is
ever downloaded (hub.resolve finds local folders only). PretrainedMixin gives
every model class in heads.py its from_pretrained / save_pretrained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from bertkit import tf_checkpoint
from bertkit.config import BertConfig
from bertkit.hub import resolve
from bertkit.io import atomic_write, write_json, write_text
from bertkit.model import init_weights
from bertkit.precision import cast_model, check_dtype, quantize_linear

log = logging.getLogger(__name__)

# (Hugging Face prefix, bertkit prefix); {i} is a layer number. Names not listed
# (word/position/token-type embeddings, pooler.dense, classifier, qa_outputs) are the same in both.
RENAMES = [
    ("embeddings.LayerNorm.", "embeddings.norm."),
    ("encoder.layer.{i}.attention.output.dense.", "layers.{i}.attn.proj."),
    ("encoder.layer.{i}.attention.output.LayerNorm.", "layers.{i}.attn_norm."),
    ("encoder.layer.{i}.intermediate.dense.", "layers.{i}.mlp.fc."),
    ("encoder.layer.{i}.output.dense.", "layers.{i}.mlp.proj."),
    ("encoder.layer.{i}.output.LayerNorm.", "layers.{i}.mlp_norm."),
    ("cls.predictions.transform.dense.", "mlm.dense."),
    ("cls.predictions.transform.LayerNorm.", "mlm.norm."),
    ("cls.predictions.bias", "mlm.bias"),
    ("cls.seq_relationship.", "nsp."),
]
SAME = ("embeddings.word_embeddings.", "embeddings.position_embeddings.", "embeddings.token_type_embeddings.",
        "pooler.dense.", "classifier.", "qa_outputs.")
# Hugging Face's separate query/key/value <-> bertkit's fused layers.{i}.attn.qkv.
HF_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
QKV = re.compile(r"layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
BUFFERS = {"embeddings.position_ids", "embeddings.token_type_ids"}  # index buffers some files carry
ENCODER = ("embeddings.", "layers.", "pooler.")  # under `bert.` in a model with a head
HEAD_PREFIXES = ("mlm.", "nsp.", "classifier.", "qa_outputs.", "pooler.")  # may be absent from a checkpoint
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
# sha256 of the weights and the vocabulary, in `sha256sum` format: loading checks them when the file is
# there, so a flipped bit is an error instead of a silently different model.
MANIFEST = "SHA256SUMS"
# Keys other libraries leave in config.json that describe the writer, not the model: stale once re-saved.
STALE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype",
                     "_attn_implementation_autoset")


def _compile(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(re.escape("{i}"), r"(\d+)"))


_HF_TO_BK = [(_compile(hf), bk) for hf, bk in RENAMES]
_BK_TO_HF = [(_compile(bk), hf) for hf, bk in RENAMES]


def _rename(key: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, target in table:
        m = pattern.match(key)
        if m:
            new = target.replace("{i}", m.group(1)) if m.groups() else target
            return new + key[m.end():]
    return key if key.startswith(SAME) else None


# ---------------------------------------------------------------- reading and writing files

def read_weights(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a checkpoint folder, one at a time, with Hugging Face names: model.safetensors
    (single or sharded), pytorch_model.bin, or Google's TensorFlow checkpoint.

    One at a time so that a loader converting each tensor as it comes (to bf16, to int8) never
    holds the file's fp32 weights whole; read with pread rather than mapped, so the file's pages
    never count in this process's resident memory on top of the tensors read out of them.
    """
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    legacy = model_dir / "pytorch_model.bin"
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        return (item for path in _shards(index) for item in _read_safetensors(path))
    if legacy.is_file():
        state = load_tensors(legacy, "PyTorch weights file")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{legacy}: expected a dict of named tensors")
        return _drain(state)
    if tf_checkpoint.is_tf_checkpoint(model_dir):
        return tf_checkpoint.read_tf_weights(model_dir)
    if (model_dir / "model.onnx").is_file():
        raise FileNotFoundError(f"{model_dir}: an ONNX export, without torch weights: run it with the ONNX "
                                f"backend (backend='onnx', --backend onnx)")
    raise FileNotFoundError(f"{model_dir}: no model.safetensors, model.safetensors.index.json, pytorch_model.bin "
                            f"or TensorFlow checkpoint")


def load_tensors(path: Path, what: str = "file of tensors") -> Any:
    """torch.load for files of tensors and plain values only: pickled code is refused, never run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: refused, it holds pickled objects other than tensors and plain values "
                         "(bertkit never runs pickled code)") from None
    except Exception as e:  # truncated, or not a torch file at all
        raise ValueError(f"{path}: damaged or not a {what} ({type(e).__name__})") from None


def _shards(index: Path) -> list[Path]:
    """The files a sharded checkpoint's index names, which must lie in the index's folder."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index}: not a safetensors index (no valid weight_map: {_first_line(e)})") from None
    folder = index.parent.resolve()
    paths = []
    for name in names:
        path = (index.parent / str(name)).resolve()
        if path.parent != folder:
            raise ValueError(f"{index}: shard {name!r} lies outside the checkpoint folder")
        if not path.is_file():
            raise FileNotFoundError(f"{index}: shard {name!r} is missing")
        paths.append(path)
    return paths


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _drain(state: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    while state:  # each tensor leaves the dict as it is handed on
        yield state.popitem()


def _read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        with safe_open(path, framework="pt", backend="pread") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
    except (SafetensorError, OSError) as e:  # a truncated file, a damaged header
        raise ValueError(f"{path}: damaged safetensors file ({_first_line(e)})") from None


# ---------------------------------------------------------------- name mapping

def from_hf(tensors: Iterable[tuple[str, torch.Tensor]], source: str) -> Iterator[tuple[str, torch.Tensor, str]]:
    """Hugging Face names (with or without `bert.`, legacy gamma/beta) -> bertkit names without `bert.`.

    A stream: yields (bertkit name, tensor, Hugging Face name for error messages) as the tensors
    come, except that a layer's query, key and value wait for each other and leave fused.
    """
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    decoder: dict[str, torch.Tensor] = {}
    words = None  # the word embeddings, to check an old file's stored decoder copy against
    has_mlm_bias = False
    for raw, tensor in tensors:
        key = raw.removeprefix("bert.")
        key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))  # TF-era LayerNorm names
        if key in BUFFERS:
            continue
        if key.startswith("cls.predictions.decoder."):
            decoder[key.rsplit(".", 1)[1]] = tensor
            continue
        m = HF_QKV.match(key)
        if m:
            layer, part, kind = m.groups()
            parts = qkv.setdefault((layer, kind), {})
            parts[part] = tensor
            if len(parts) == 3:
                del qkv[layer, kind]
                yield (f"layers.{layer}.attn.qkv.{kind}", torch.cat([parts.pop("query"), parts.pop("key"),
                       parts.pop("value")]), f"encoder.layer.{layer}.attention.self.query/key/value.{kind}")
            continue
        new = _rename(key, _HF_TO_BK)
        if new is None:
            raise ValueError(f"{source}: unknown weight {raw!r}: not a BERT parameter bertkit knows")
        words = tensor if new == "embeddings.word_embeddings.weight" else words
        has_mlm_bias = has_mlm_bias or new == "mlm.bias"
        yield new, tensor, raw
    for (layer, kind), parts in qkv.items():  # only incomplete triples are left
        part = next(p for p in ("query", "key", "value") if p not in parts)
        raise ValueError(f"{source}: missing weight encoder.layer.{layer}.attention.self.{part}.{kind}")
    # The MLM decoder is tied to the word embeddings and its bias to cls.predictions.bias;
    # old files store the copies. A decoder that is NOT the embeddings cannot be tied.
    if "weight" in decoder and words is not None and not torch.equal(decoder["weight"], words):
        raise ValueError(f"{source}: cls.predictions.decoder.weight differs from the word embeddings; "
                         f"bertkit ties the MLM decoder to them")
    if "bias" in decoder and not has_mlm_bias:
        yield "mlm.bias", decoder["bias"], "cls.predictions.decoder.bias"


def to_hf(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """bertkit state dict -> Hugging Face names (tied decoder left out, as Hugging Face saves it)."""
    prefix = model.base_prefix
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = name.removeprefix(prefix) if prefix else name
        hf_prefix = prefix if key.startswith(ENCODER) else ""
        m = QKV.match(key)
        if m:
            for part, t in zip(("query", "key", "value"), tensor.chunk(3)):
                # clone: safetensors refuses tensors that share memory
                out[f"{hf_prefix}encoder.layer.{m.group(1)}.attention.self.{part}.{m.group(2)}"] = t.cpu().clone()
            continue
        out[hf_prefix + _rename(key, _BK_TO_HF)] = tensor.contiguous().cpu()
    return out


# ---------------------------------------------------------------- the model methods

M = TypeVar("M", bound="PretrainedMixin")


class PretrainedMixin:
    """from_pretrained / save_pretrained for BertModel and every head."""

    base_prefix = ""  # "bert." for a model with a head: where the encoder's names start

    @classmethod
    def from_pretrained(cls: type[M], name_or_dir: str | os.PathLike, config: BertConfig | None = None, *,
                        dtype: str = "fp32", **overrides: Any) -> M:
        """Load a BERT checkpoint (Hugging Face layout, or Google's TensorFlow release), in eval mode.

        dtype: "fp32", or "bf16" / "int8" for inference (see precision.py); each weight is
        converted as it is read, so the fp32 model is never held whole.
        overrides change the config (e.g. num_labels=3, hidden_dropout_prob=0.0).
        A head the checkpoint lacks is initialised and reported in one warning line.
        """
        check_dtype(dtype)
        model_dir = resolve(name_or_dir)
        config = config or read_config(model_dir)
        if overrides:
            config = config.replace(**overrides)
        verify_manifest(model_dir)
        check_vocab_size(model_dir, config)
        # Built on the meta device, the model holds no memory until the file's
        # tensors are assigned in: peak memory is one copy of the weights, not two.
        with torch.device("meta"):
            model = cls(config)
        if dtype == "bf16":
            model.to(torch.bfloat16)  # on meta: only the dtype each tensor is converted to as it loads
        load_weights(model, read_weights(model_dir), str(model_dir),
                     on_linear=quantize_linear if dtype == "int8" else None)
        model.source_dir = model_dir
        return cast_model(model, dtype, inplace=True)  # eval mode; int8: the initialised heads too

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any = None, card: dict | None = None) -> Path:
        """Write the Hugging Face layout: config.json, model.safetensors, the tokenizer files, a
        README.md model card and the SHA256SUMS manifest.

        Tokenizer files come from `tokenizer.save_pretrained` when given, else are copied from the
        folder this model was loaded from, if it had them. `card` adds lines to the model card
        (e.g. {"data": "...", "metrics": {...}}). Each file is written atomically; to replace a
        whole folder at once, save into bertkit.io.atomic_dir.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = config_json(self)
        write_json(directory / "config.json", config)
        weights = to_hf(self)
        if not all(bool(t.isfinite().all()) for t in weights.values() if t.is_floating_point()):
            raise ValueError(f"{directory}: refusing to save non-finite weights (NaN or infinity)")
        atomic_write(directory / "model.safetensors", lambda p: save_file(weights, p, metadata={"format": "pt"}))
        source = getattr(self, "source_dir", None)
        write_tokenizer(directory, tokenizer, source)
        write_text(directory / "README.md", model_card(config, directory, source, card or {}))
        write_manifest(directory)
        return directory


def write_tokenizer(directory: Path, tokenizer: Any, source: Path | None) -> None:
    """The tokenizer files beside a model: `tokenizer.save_pretrained` when given, else copies of
    those in the folder the model was loaded from (`source`), if it had them."""
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    elif source is not None and Path(source).resolve() != directory.resolve():
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file():
                atomic_write(directory / name, lambda p, name=name: shutil.copyfile(Path(source) / name, p))


def config_json(model: torch.nn.Module) -> dict:
    """What config.json holds for `model`: its config, less the keys that describe another writer,
    with its class named in `architectures` (what loaders pick the head by)."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in STALE_CONFIG_KEYS}
    config["architectures"] = [type(model).__name__]
    return config


def read_config(model_dir: Path) -> BertConfig:
    """config.json, or Google's bert_config.json converted."""
    if (model_dir / "config.json").is_file() or not (model_dir / "bert_config.json").is_file():
        return BertConfig.from_json(model_dir / "config.json")
    try:
        return BertConfig.from_dict(tf_checkpoint.tf_config(model_dir))
    except ValueError as e:
        raise ValueError(f"{model_dir / 'bert_config.json'}: {e}") from None


def check_vocab_size(model_dir: Path, config: BertConfig) -> None:
    """A vocab.txt with more tokens than the model has embeddings would index past the table."""
    vocab = model_dir / "vocab.txt"
    if vocab.is_file():
        with open(vocab, "rb") as f:
            n = sum(1 for _ in f)
        if n > config.vocab_size:
            raise ValueError(f"{vocab}: {n} tokens, but the model has embeddings for {config.vocab_size} "
                             f"(config.json vocab_size): the vocabulary does not belong to these weights")


# ---------------------------------------------------------------- manifest and model card


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    """SHA256SUMS over the weights (safetensors or an ONNX export) and the vocabulary
    (`sha256sum -c SHA256SUMS` checks it too)."""
    names = sorted(p.name for p in directory.iterdir()
                   if p.suffix in (".safetensors", ".onnx") or p.name in ("model.safetensors.index.json", "vocab.txt"))
    write_text(directory / MANIFEST, "".join(f"{_sha256(directory / n)}  {n}\n" for n in names))


def verify_manifest(directory: Path) -> None:
    """Check every file SHA256SUMS lists; a missing or changed file is a one-line error."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        digest, _, name = line.strip().partition("  ")
        if not line.strip():
            continue
        if len(digest) != 64 or not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{manifest}:{lineno}: not a 'SHA256  FILE' line")
        path = directory / name
        if not path.is_file():
            raise ValueError(f"{path}: listed in {MANIFEST} but missing")
        if _sha256(path) != digest:
            raise ValueError(f"{path}: sha256 differs from {MANIFEST}: the file is damaged or was changed "
                             f"(delete {MANIFEST} to accept it as it is)")


def model_card(config: dict, directory: Path, source: Path | None, card: dict) -> str:
    """README.md for a saved model: what it is, what it was trained for, and how to load it."""
    from bertkit import __version__

    arch = config["architectures"][0]
    task = config.get("finetuning_task")
    base = card.get("base_model") or config.get("base_model") or (str(source) if source else None)
    labels = config.get("id2label")
    lines = ["---", "library_name: bertkit", "tags: [bert]"] + ([f"base_model: {base}"] if base else []) + ["---",
             f"# {directory.resolve().name}", "",
             f"A BERT `{arch}`: {config['num_hidden_layers']} layers, hidden size {config['hidden_size']}, "
             f"{config['num_attention_heads']} attention heads, vocabulary of {config['vocab_size']}. "
             f"Saved by bertkit {__version__} in the Hugging Face layout.", ""]
    if base:
        lines += [f"- Base model: `{base}`"]
    if task:
        lines += [f"- Fine-tuned for: `{task}`"]
    if labels and arch != "BertForQuestionAnswering":
        ordered = sorted(labels.items(), key=lambda item: int(item[0]))
        lines += ["- Labels: " + ", ".join(f"{i} = `{name}`" for i, name in ordered)]
    if config.get("finetuning_max_length"):
        lines += [f"- Input length: {config['finetuning_max_length']} tokens"]
    for key, value in card.items():
        if key == "base_model":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        lines += [f"- {key.replace('_', ' ').capitalize()}: {value}"]
    lines += ["", "## Load it", "", "```python", "# bertkit", f"from bertkit import {arch}",
              f'model = {arch}.from_pretrained("{directory}")', "", "# transformers",
              f"from transformers import {arch}",
              f'model = {arch}.from_pretrained("{directory}")', "```", "",
              f"`{MANIFEST}` holds the sha256 of the weights and the vocabulary; bertkit checks it when loading.", ""]
    return "\n".join(lines)


def load_weights(model: torch.nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], source: str,
               on_linear: Callable[[torch.nn.Linear], torch.nn.Module] | None = None) -> None:
    """Put Hugging Face-named tensors into a meta-built model, one by one; strict except for heads
    the checkpoint lacks. Each tensor takes the dtype of the model's own. on_linear, if given,
    replaces each nn.Linear as soon as its weight and bias are in (int8 quantization)."""
    prefix = model.base_prefix
    own = {name: (t.shape, t.dtype) for name, t in model.state_dict().items()}
    loaded: set[str] = set()
    ignored = []
    for key, tensor, origin in from_hf(tensors, source):
        name = prefix + key if key.startswith(ENCODER) else key
        if name not in own:
            if key.startswith(HEAD_PREFIXES):  # another head's weights (e.g. cls.* when fine-tuning)
                ignored.append(origin)
                continue
            raise ValueError(f"{source}: weight {origin!r} has no place in {type(model).__name__} "
                             f"(does config.json match the weights?)")
        shape, dtype = own[name]
        if tensor.shape != shape:
            raise ValueError(f"{source}: weight {origin!r} has shape {tuple(tensor.shape)}, "
                             f"{type(model).__name__} expects {tuple(shape)}")
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        module.register_parameter(attr, torch.nn.Parameter(tensor.to(dtype)))  # replaces the meta one
        loaded.add(name)
        if on_linear and type(module) is torch.nn.Linear and not any(p.is_meta for p in module.parameters()):
            parent, _, child = owner.rpartition(".")
            setattr(model.get_submodule(parent), child, on_linear(module))
    missing = [name for name in own if name not in loaded]
    # Head weights and the pooler may be new (initialised); the encoder's may not.
    fresh = [n for n in missing if n.startswith(prefix + "pooler.") or (prefix and not n.startswith(prefix))]
    hard = [n for n in missing if n not in fresh]
    if hard:
        raise ValueError(f"{source}: missing weight(s) for {type(model).__name__}: {', '.join(hard[:5])}"
                         + (f" and {len(hard) - 5} more" if len(hard) > 5 else ""))
    _initialise_meta(model)
    if fresh:
        log.warning("%s: newly initialised (not in %s), train before use: %s",
                    type(model).__name__, source, ", ".join(fresh))
    if ignored:
        log.info("%s: ignored %d checkpoint weights of other heads: %s",
                 type(model).__name__, len(ignored), ", ".join(ignored))


def _initialise_meta(model: torch.nn.Module) -> None:
    """Give real memory and BERT's initialisation to what a meta-built model did not load."""
    for module in model.modules():
        if any(p.is_meta for p in module.parameters(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
            with torch.no_grad():
                for p in module.parameters(recurse=False):
                    p.zero_()  # biases of custom modules (the MLM head's) start at zero
            init_weights(module, model.config.initializer_range)
