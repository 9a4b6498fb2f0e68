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

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from bertkit.config import PRESETS, BertConfig, load_settings
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
    resume: bool | Literal["auto"] = False  # continue the run in train.out_dir (auto: when there is one)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainConfig = field(default_factory=_pretrain_defaults)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> PretrainConfig:
    """PretrainConfig from a YAML/JSON file (optional) plus `key=value` overrides (config.load_settings)."""
    cfg = load_settings(PretrainConfig, path, overrides)
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
    # The exports are whole models: weights, config and the vocabulary their ids refer to.
    return train(model, batches, cfg.train, evaluate, batch_stats=pretraining_stats, resume=cfg.resume,
                 export=lambda m, folder: m.save_pretrained(folder, tokenizer=tokenizer))
