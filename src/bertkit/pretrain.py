"""Pre-training glue: config -> prepared shards -> BertForPreTraining -> the training engine.

    bertkit pretrain --config pretrain.yaml train.max_steps=2000 model=small

The config (YAML or JSON) mirrors PretrainConfig; `key=value` overrides use dotted keys
(train.lr=1e-4, masking.whole_word=true) and YAML values. `model` is a preset name for
pre-training from scratch, or a checkpoint directory / name to continue pre-training from
(e.g. sentence-transformers/all-MiniLM-L6-v2: missing MLM/NSP heads are initialised, the MLM
decoder is tied to the word embeddings). Several processes (CPU or GPU):

    torchrun --nproc_per_node=2 -m bertkit.cli pretrain --config pretrain.yaml
"""

from __future__ import annotations

import dataclasses
import json
import os
import types as types_
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from bertkit.config import PRESETS, BertConfig
from bertkit.data import MaskedBatches, Masker, MaskingConfig, open_prepared
from bertkit.heads import BertForPreTraining
from bertkit.tokenizer import Tokenizer
from bertkit.train import TrainConfig, TrainResult, train


def _pretrain_defaults() -> TrainConfig:
    # BERT's recipe: lr 1e-4, 1% warmup, weight decay 0.01, no epochs but a step budget.
    return TrainConfig(lr=1e-4, warmup=0.01, max_steps=10_000, eval_every=1000, save_every=1000, log_every=50,
                       out_dir="runs/pretrain")


@dataclass
class PretrainConfig:
    data: str = ""  # directory written by `bertkit prepare` (shards, meta.json, vocab.txt)
    model: str = "mini"  # preset name (tiny, mini, small, medium, base, large) or a checkpoint to continue from
    model_overrides: dict[str, Any] = field(default_factory=dict)  # BertConfig fields, e.g. hidden_dropout_prob
    batch_size: int = 32
    eval_instances: int = 1000  # held out from the END of the data: the last documents (one may straddle)
    eval_data: str = ""  # a second prepared directory to evaluate on instead (e.g. a test corpus); then all
    # of `data` trains and the first eval_instances of eval_data are held out
    eval_batch_size: int = 64
    resume: bool = False  # continue from train.out_dir/state.pt
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainConfig = field(default_factory=_pretrain_defaults)


# ---------------------------------------------------------------------------- config files


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Numbers from strings where the field wants a number (YAML reads 1e-4 as a string)."""
    types = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types_.UnionType) else (hint,)
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int)):
        return value
    for t in (int, float):
        if t in types and not isinstance(value, t):
            try:
                return t(value)
            except ValueError:
                raise ValueError(f"config key {key!r}: {value!r} is not a valid {t.__name__}") from None
    return value


def _build(cls, values: dict, where: str):
    """Dataclass `cls` from a dict, refusing unknown keys with the key's full name."""
    if not isinstance(values, dict):
        raise ValueError(f"config {where or 'root'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        full = f"{where}.{key}" if where else key
        if key not in hints:
            raise ValueError(f"config key {full!r} is not one of: {', '.join(f.name for f in dataclasses.fields(cls))}")
        sub = {"masking": MaskingConfig, "train": TrainConfig}.get(key) if cls is PretrainConfig else None
        kwargs[key] = _build(sub, value, full) if sub else _coerce(value, hints[key], full)
    return cls(**kwargs)


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise ValueError(f"override {dotted!r}: {p!r} is not a section")
    tree[last] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> PretrainConfig:
    """PretrainConfig from a YAML/JSON file (optional) plus `key=value` overrides."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}")
        try:
            tree = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text()) or {}
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({e})") from None
    base = dataclasses.asdict(_pretrain_defaults())
    tree["train"] = {**base, **(tree.get("train") or {})}  # file values win over pre-training defaults
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        _set(tree, key.strip(), yaml.safe_load(value))
    cfg = _build(PretrainConfig, tree, "")
    if not cfg.data:
        raise ValueError("config: `data` (a directory written by `bertkit prepare`) is required")
    return cfg


# ---------------------------------------------------------------------------- model, data, metrics


def build_model(cfg: PretrainConfig, tokenizer: Tokenizer) -> BertForPreTraining:
    if cfg.model in PRESETS:
        torch.manual_seed(cfg.train.seed)  # the same config always starts from the same weights
        overrides = {"vocab_size": len(tokenizer.vocab), "pad_token_id": tokenizer.pad_token_id,
                     **cfg.model_overrides}
        return BertForPreTraining(BertConfig.preset(cfg.model, **overrides))
    model = BertForPreTraining.from_pretrained(cfg.model, **cfg.model_overrides)
    if model.config.vocab_size < len(tokenizer.vocab):
        raise ValueError(f"{cfg.model}: vocab_size {model.config.vocab_size} < the data's vocabulary "
                         f"({len(tokenizer.vocab)})")
    return model


def pretraining_stats(batch: dict, out: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Correct/total for MLM (masked positions only) and NSP: the engine's batch_stats hook."""
    labels = batch["masked_lm_labels"]
    real = labels != -100
    mlm_correct = ((out["logits"].argmax(-1) == labels) & real).sum()
    nsp = batch["next_sentence_label"]
    return {"mlm_accuracy": (mlm_correct, real.sum()),
            "nsp_accuracy": ((out["nsp_logits"].argmax(-1) == nsp).sum(), torch.tensor(len(nsp)))}


def heldout_evaluator(batches: MaskedBatches):
    """evaluate(model) -> MLM/NSP loss and accuracy on the held-out instances (fixed masks)."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        sums = {"mlm_loss": 0.0, "nsp_loss": 0.0, "mlm_correct": 0.0, "nsp_correct": 0.0, "masked": 0.0, "seqs": 0.0}
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            stats = pretraining_stats(batch, out)
            n_masked, n_seqs = float(stats["mlm_accuracy"][1]), float(stats["nsp_accuracy"][1])
            sums["mlm_loss"] += float(out["mlm_loss"]) * n_masked  # the loss is a mean over masked tokens
            sums["nsp_loss"] += float(out["nsp_loss"]) * n_seqs
            sums["mlm_correct"] += float(stats["mlm_accuracy"][0])
            sums["nsp_correct"] += float(stats["nsp_accuracy"][0])
            sums["masked"] += n_masked
            sums["seqs"] += n_seqs
        mlm_loss, nsp_loss = sums["mlm_loss"] / sums["masked"], sums["nsp_loss"] / sums["seqs"]
        return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
                "mlm_accuracy": sums["mlm_correct"] / sums["masked"],
                "nsp_accuracy": sums["nsp_correct"] / sums["seqs"]}

    return evaluate


def pretrain(cfg: PretrainConfig) -> TrainResult:
    """Pre-train (or continue pre-training) with MLM + NSP; write everything under cfg.train.out_dir."""
    data = open_prepared(cfg.data)
    tokenizer = Tokenizer.from_pretrained(data.dir)
    model = build_model(cfg, tokenizer)
    if cfg.model not in PRESETS and (Path(model.source_dir) / "vocab.txt").is_file():
        data.check_vocab(Tokenizer.from_pretrained(model.source_dir).vocab)
    if data.max_seq_length > model.config.max_position_embeddings:
        raise ValueError(f"{cfg.data}: sequences of {data.max_seq_length} tokens exceed the model's "
                         f"{model.config.max_position_embeddings} positions")
    masker = Masker(cfg.masking, tokenizer.vocab, tokenizer.special_ids, tokenizer.mask_token_id)
    n_eval = cfg.eval_instances
    if cfg.eval_data:
        eval_data = open_prepared(cfg.eval_data)
        eval_data.check_vocab(tokenizer.vocab)
        n_eval = min(n_eval, len(eval_data))
        train_ids, eval_ids = list(range(len(data))), list(range(n_eval))
    else:
        eval_data = data
        if not 0 <= n_eval < len(data):
            raise ValueError(f"eval_instances {n_eval} must be below the {len(data)} prepared instances")
        train_ids, eval_ids = list(range(len(data) - n_eval)), list(range(len(data) - n_eval, len(data)))
    batches = MaskedBatches(data, train_ids, cfg.batch_size, masker, seed=cfg.train.seed, shuffle=True)
    evaluate = None
    if n_eval:
        heldout = MaskedBatches(eval_data, eval_ids, cfg.eval_batch_size, masker, seed=cfg.train.seed + 1,
                                shuffle=False)
        evaluate = heldout_evaluator(heldout)
    result = train(model, batches, cfg.train, evaluate, batch_stats=pretraining_stats, resume=cfg.resume)
    out = Path(cfg.train.out_dir) if cfg.train.out_dir else None
    if out is not None and int(os.environ.get("RANK", "0")) == 0:
        for d in (out / "last", out / "best"):  # make the exported models self-contained
            if d.is_dir():
                tokenizer.save_pretrained(d)
    return result
