"""Inference: sentence embeddings from a BERT encoder, in fp32, bf16 or int8.

texts -> WordPiece ids -> length-sorted batches (batching.sorted_batches:
each batch pads only to its own longest text) -> encoder ->
pooled vectors, returned in input order.

Long inputs (more than max_length tokens, which defaults to the model's 512
positions) never fail. long_inputs="truncate" (default, what
sentence-transformers does) keeps the first max_length tokens.
long_inputs="windows" cuts the text into windows of max_length tokens that
overlap by `stride` tokens, embeds every window, and averages the window
vectors weighted by each window's token count, so the whole text counts.

dtypes:
  fp32  the reference.
  bf16  a bf16 copy of the weights (activations bf16 too; pooling in fp32).
        Casting the weights once is as fast as torch.autocast on long texts
        and faster on short ones, where autocast's re-cast of every weight at
        every matmul dominates; same quality (bench/infer.py measures both).
        Only worth it on CPUs with bf16 units (AVX512-BF16/AMX): on AVX2 bf16
        is emulated and several times slower than fp32.
  int8  torch's dynamic quantization of every nn.Linear: int8 weights
        (per output channel), activations quantized per batch at run time;
        embeddings, LayerNorm and attention's softmax stay fp32.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bertkit.batching import Prepared, collate, sorted_batches
from bertkit.heads import BertModel
from bertkit.hub import DEFAULT_MODEL, resolve
from bertkit.onnx_model import OnnxModel
from bertkit.precision import cast_model
from bertkit.tokenizer import Tokenizer

POOLINGS = ("mean", "cls")
BACKENDS = ("torch", "onnx")  # onnx: an exported model.onnx run by ONNX Runtime (onnx_model.py)
LONG_INPUTS = ("truncate", "windows")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[batch, seq, hidden] -> [batch, hidden] in fp32: [CLS] vector, or mean over real tokens."""
    hidden = hidden.float()
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [batch, seq, 1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def sentence_transformers_options(model_dir: str | os.PathLike) -> dict:
    """How a sentence-transformers folder embeds: {"pooling": "mean" | "cls", "max_length": n} from its
    1_Pooling/config.json and sentence_bert_config.json; {} for a plain checkpoint."""
    model_dir = Path(model_dir)
    options: dict = {}
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.is_file():
        modes = {k for k, v in _json_object(pooling).items() if k.startswith("pooling_mode_") and v is True}
        names = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
        if len(modes) != 1 or not modes <= names.keys():
            raise ValueError(f"{pooling}: pooling {' + '.join(sorted(modes)) or 'none'} is not one of bertkit's "
                             f"({', '.join(names)})")
        options["pooling"] = names[modes.pop()]
    settings = model_dir / "sentence_bert_config.json"
    if settings.is_file() and isinstance(_json_object(settings).get("max_seq_length"), int):
        options["max_length"] = _json_object(settings)["max_seq_length"]
    return options


def _json_object(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a sentence-transformers config ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a sentence-transformers config (not a JSON object)")
    return obj


def load_model(cls: type, model_dir: Path, backend: str = "torch", dtype: str | None = None, **kwargs):
    """`cls.from_pretrained(model_dir)` for the torch backend (in `dtype`, converted as it is read),
    or the folder's exported model.onnx for the ONNX backend."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "onnx":
        return OnnxModel.from_pretrained(model_dir)
    return cls.from_pretrained(model_dir, dtype=dtype or "fp32", **kwargs)


def ready(model: nn.Module | OnnxModel, dtype: str | None, device: torch.device, *,
          inplace: bool = False) -> tuple[nn.Module | OnnxModel, str]:
    """A loaded model made ready to run -> (model, its dtype): a torch model cast to `dtype` (fp32 by
    default) and moved to `device`; an OnnxModel as exported (its own precision, on the CPU)."""
    if isinstance(model, OnnxModel):
        dtype = dtype or model.dtype
        if dtype != model.dtype or device.type != "cpu":
            raise ValueError(f"{model.path} is an {model.dtype} ONNX model run on the CPU; dtype {dtype!r} "
                             f"and device {str(device)!r} apply to the torch backend (export with --int8 for int8)")
        return model, dtype
    dtype = dtype or "fp32"
    if dtype == "int8" and device.type != "cpu":
        raise ValueError(f"dtype int8 runs on the CPU only (torch's dynamic quantization), not on {str(device)!r}")
    return cast_model(model, dtype, inplace=inplace).to(device), dtype


class Embedder:
    """A tokenizer and an encoder held together: embed many times without reloading.

    >>> e = Embedder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", dtype="int8")
    >>> vectors = e(["a sentence", "another one"])  # np.ndarray [2, 384], float32

    In two stages (how a server batches many requests together): e.run(e.prepare(texts)).
    """

    def __init__(self, model: nn.Module | OnnxModel, tokenizer: Tokenizer, *, dtype: str | None = None,
                 pooling: str = "mean", max_length: int | None = None, long_inputs: str = "truncate",
                 stride: int | None = None, normalize: bool = False, inplace: bool = False, device: str = "cpu",
                 workers: int | None = None):
        """dtype: fp32 by default; an OnnxModel runs in the precision it was exported in.
        inplace: convert `model` itself to `dtype` instead of a copy (see precision.cast_model).
        device: where the encoder runs ("cpu", "cuda", "cuda:1", ...); vectors always come back on the CPU.
        workers: processes that tokenize (Tokenizer.encode_batch's pool); None: the tokenizer's default."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        if long_inputs not in LONG_INPUTS:
            raise ValueError(f"long_inputs must be one of {', '.join(LONG_INPUTS)}, not {long_inputs!r}")
        positions = model.config.max_position_embeddings
        max_length = max_length if max_length is not None else min(positions, tokenizer.model_max_length)
        if not 3 <= max_length <= positions:
            raise ValueError(f"max_length must be between 3 and the model's {positions} positions, got {max_length}")
        # Windows overlap by a quarter of their content by default: every token
        # except the first and last quarter-window is seen with context on both sides.
        stride = (max_length - 2) // 4 if stride is None else stride
        if not 0 <= stride < max_length - 2:
            raise ValueError(f"stride must be between 0 and max_length - 3 ({max_length - 3}), got {stride}")
        self.device = torch.device(device)
        self.model, dtype = ready(model, dtype, self.device, inplace=inplace)
        self.tokenizer = tokenizer
        self.dtype, self.pooling, self.max_length = dtype, pooling, max_length
        self.long_inputs, self.stride, self.normalize = long_inputs, stride, normalize
        self.workers = workers

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, *, backend: str = "torch", **options) -> Embedder:
        """Load a checkpoint directory (or installed model name) with its vocab.txt.

        backend "onnx": the folder is a `bertkit export --format onnx` one, run by ONNX Runtime
        (its dtype is the file's: fp32, or int8 when exported with --int8)."""
        model_dir = resolve(name_or_dir)
        model = load_model(BertModel, model_dir, backend, options.get("dtype"))
        return cls(model, Tokenizer.from_pretrained(model_dir), inplace=True, **options)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def prepare(self, texts: Sequence[str]) -> list[Prepared]:
        """Texts -> one Prepared each: its word pieces (several windows for a long text with
        long_inputs="windows"), `truncated` when tokens past max_length were dropped."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings; wrap a single text in a list")
        windows = self.long_inputs == "windows"
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is a {type(text).__name__}, not a str")
        # Overflowing windows are asked for in both modes: truncation keeps the first and learns
        # from the rest that something was cut.
        pool = {"workers": self.workers} if self.workers is not None else {}
        encodings = self.tokenizer.encode_batch(list(texts), max_length=self.max_length, truncation=True,
                                                return_offsets=False, stride=self.stride if windows else 0,
                                                return_overflowing=True, **pool)
        return [Prepared([{"input_ids": e.input_ids, "attention_mask": e.attention_mask}
                          for e in ((enc, *enc.overflowing) if windows else (enc,))],
                         truncated=bool(enc.overflowing) and not windows) for enc in encodings]

    def features(self, texts: Sequence[str]) -> tuple[list[dict], list[int]]:
        """Model inputs for each text (one, or several windows) and the text each belongs to."""
        prepared = self.prepare(texts)
        return ([f for p in prepared for f in p.features],
                [i for i, p in enumerate(prepared) for _ in p.features])

    @torch.inference_mode()
    def run(self, prepared: Sequence[Prepared], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Prepared texts -> [len(prepared), hidden] float32 embeddings, in their order."""
        owners = [i for i, p in enumerate(prepared) for _ in p.features]
        lengths = [len(f["input_ids"]) for p in prepared for f in p.features]
        vectors = np.empty((len(owners), self.dim), dtype=np.float32)
        bar = tqdm(total=len(owners), unit="seq", desc="embed", disable=not progress, file=sys.stderr)
        for idx, batch in sorted_batches(prepared, batch_size, self.device):
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            vectors[idx] = pool(out.last_hidden_state, batch["attention_mask"], self.pooling).cpu().numpy()
            bar.update(len(idx))
        bar.close()
        if len(owners) != len(prepared):  # windows: token-weighted mean of each text's windows
            weights = np.asarray(lengths, dtype=np.float32)[:, None]
            sums = np.zeros((len(prepared), self.dim), dtype=np.float32)
            np.add.at(sums, owners, vectors * weights)
            totals = np.zeros((len(prepared), 1), dtype=np.float32)
            np.add.at(totals, owners, weights)
            vectors = sums / totals
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def __call__(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """[len(texts), hidden] float32 embeddings, in the order of `texts`."""
        return self.run(self.prepare(texts), batch_size, progress)

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32, show_progress_bar: bool = False,
               normalize_embeddings: bool = False, convert_to_tensor: bool = False) -> np.ndarray | torch.Tensor:
        """sentence-transformers' `encode`: a list of texts -> [n, hidden]; one str -> [hidden].
        normalize_embeddings gives unit-length vectors (cosine = dot product)."""
        single = isinstance(sentences, str)
        vectors = self([sentences] if single else list(sentences), batch_size, show_progress_bar)
        if normalize_embeddings and not self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        vectors = vectors[0] if single else vectors
        return torch.from_numpy(vectors) if convert_to_tensor else vectors


def embed(texts: Sequence[str], model: str | os.PathLike | nn.Module | OnnxModel | Embedder = DEFAULT_MODEL, *,
          tokenizer: Tokenizer | None = None, pooling: str = "mean", batch_size: int = 32, dtype: str | None = None,
          max_length: int | None = None, long_inputs: str = "truncate", stride: int | None = None,
          normalize: bool = False, progress: bool = False, device: str = "cpu", backend: str = "torch") -> np.ndarray:
    """Embed texts -> float32 [len(texts), hidden], in input order.

    model: a checkpoint directory or installed model name (loaded each call:
    hold an Embedder to embed repeatedly; an ONNX export folder with backend="onnx"),
    a loaded BertModel or OnnxModel (then pass its `tokenizer`), or an Embedder
    (whose own options are used). dtype: fp32 by default (an ONNX model: its own).
    """
    if isinstance(model, Embedder):
        return model(texts, batch_size=batch_size, progress=progress)
    options = dict(dtype=dtype, pooling=pooling, max_length=max_length, long_inputs=long_inputs, stride=stride,
                   normalize=normalize, device=device)
    if isinstance(model, (nn.Module, OnnxModel)):
        if tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer: embed(texts, model, tokenizer=...)")
        embedder = Embedder(model, tokenizer, **options)
    else:
        embedder = Embedder.from_pretrained(model, backend=backend, **options)
    return embedder(texts, batch_size=batch_size, progress=progress)


@torch.inference_mode()
def token_vectors(texts: Sequence[str], token: str,
                  model: str | os.PathLike | nn.Module | Embedder = DEFAULT_MODEL, *,
                  tokenizer=None) -> np.ndarray:
    """Contextual vectors: the last-layer vector of word piece `token` in each text -> float32 [len(texts), hidden].

    The first occurrence counts. A static embedding would give one vector for
    every text; BERT's vector depends on the words around it ("bat" in a
    cricket sentence vs a cave sentence, examples/contextual_bat.py).
    """
    if isinstance(model, Embedder):
        embedder = model
    elif isinstance(model, nn.Module):
        if tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer: token_vectors(texts, token, model, tokenizer=...)")
        embedder = Embedder(model, tokenizer)
    else:
        embedder = Embedder.from_pretrained(model)
    tok = embedder.tokenizer
    if token not in tok.vocab:
        raise ValueError(f"{token!r} is not a single word piece of this vocabulary "
                         f"(it splits into {tok.tokenize(token)})")
    token_id = tok.vocab[token]
    features = []
    for i, text in enumerate(texts):
        ids = tok.encode(text, max_length=embedder.max_length, truncation=True).input_ids
        if token_id not in ids:
            raise ValueError(f"text {i} ({text[:40]!r}) has no word piece {token!r}")
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    batch = {k: v.to(embedder.device) for k, v in collate(features).items()}
    hidden = embedder.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    positions = torch.tensor([f["input_ids"].index(token_id) for f in features])  # [texts]
    return hidden[torch.arange(len(features)), positions].float().cpu().numpy()  # [texts, hidden]


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows: [n, dim] -> [n, n]."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T
