"""Pre-training step benchmark: bertkit vs transformers' BertForPreTraining, same process, same batch.

    flock /tmp/bertkit-bench.lock .venv/bin/python bench/pretrain.py
    python bench/pretrain.py --device cuda --batch-size 128      # on a GPU

A MiniLM-size model (6 layers, hidden 384, 12 heads, FFN 1536, bert-base-uncased vocabulary) is
built by bertkit, saved, and loaded by transformers, so both hold identical weights. One batch of
16 x 128 real IMDB instances (bertkit prepare + dynamic masking; random ids when the data is
absent) feeds both. First the MLM+NSP losses are compared with dropout off; then training steps
(forward + backward + clipping + the engine's fused AdamW, for both models) alternate between the two models
so that machine load hits both alike, in fp32 and in bf16 autocast. tokens/s counts real
(attention-mask) tokens. bertkit's MLM head computes logits at the masked positions only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BERTKIT_DATA", ROOT.parent / "shared" / "data"))


def minilm_dir() -> Path:
    from bertkit.hub import resolve

    return resolve("sentence-transformers/all-MiniLM-L6-v2")


def make_batch(batch_size: int, seq: int, tmp: Path, vocab_dir: Path | None = None) -> tuple[dict, str]:
    from bertkit.data import MaskedBatches, Masker, MaskingConfig, PretrainingData, prepare
    from bertkit.tokenizer import Tokenizer

    imdb = DATA / "imdb" / "train.jsonl"
    if imdb.is_file():
        with open(imdb, encoding="utf-8") as f:
            (tmp / "c.jsonl").write_text("".join(next(f) for _ in range(200)), encoding="utf-8")
        prepare(vocab_dir or minilm_dir(), [tmp / "c.jsonl"], tmp / "shards", max_seq_length=seq, workers=1,
                progress=False)
        data = PretrainingData(tmp / "shards")
        tok = Tokenizer.from_pretrained(tmp / "shards")
        full = [i for i in range(len(data)) if data.length(i) == seq]  # the common case: filled sequences
        masker = Masker(MaskingConfig(max_predictions=20), tok.vocab, tok.special_ids, tok.mask_token_id)
        return MaskedBatches(data, full[:batch_size], batch_size, masker, seed=0, shuffle=False)[0], "IMDB"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (batch_size, seq), generator=g)
    pos = torch.stack([torch.randperm(seq - 2, generator=g)[:20].sort().values + 1 for _ in range(batch_size)])
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids),
            "masked_positions": pos, "masked_lm_labels": torch.gather(ids, 1, pos),
            "next_sentence_label": torch.randint(0, 2, (batch_size,), generator=g)}, "random ids"


def batch_build_race(tmp: Path, batch_size: int, repeats: int = 30) -> dict[str, float]:
    """Median ms to build one masked batch: bertkit's MaskedBatches vs transformers' collator."""
    import transformers

    from bertkit.data import MaskedBatches, Masker, MaskingConfig, PretrainingData
    from bertkit.tokenizer import Tokenizer

    data = PretrainingData(tmp / "shards")
    tok = Tokenizer.from_pretrained(tmp / "shards")
    n = min(len(data), batch_size * repeats)
    ours = MaskedBatches(data, list(range(n)), batch_size, Masker(MaskingConfig(), tok.vocab, tok.special_ids,
                                                                   tok.mask_token_id), seed=0)
    hf_tok = transformers.BertTokenizerFast(vocab_file=str(tmp / "shards" / "vocab.txt"))
    collator = transformers.DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15)
    features = []
    for idx in ours.order:
        features.append([])
        for j in idx:
            ids, a_end, _ = data[j]
            features[-1].append({"input_ids": ids.tolist(), "token_type_ids": [0] * a_end + [1] * (len(ids) - a_end)})
    times = {"bertkit": [], "transformers": []}
    for i in range(len(ours)):
        t = time.perf_counter()
        ours[i]
        times["bertkit"].append(time.perf_counter() - t)
        t = time.perf_counter()
        collator(features[i])
        times["transformers"].append(time.perf_counter() - t)
    med = {k: 1000 * sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"batch build ({batch_size} instances, {len(ours)} batches): bertkit MaskedBatches {med['bertkit']:.1f} ms   "
          f"transformers DataCollatorForLanguageModeling {med['transformers']:.1f} ms   "
          f"ratio {med['transformers'] / med['bertkit']:.2f}x")
    return med


def hf_batch(batch: dict) -> dict:
    """The same targets in transformers' form: full-length labels, -100 where nothing is predicted."""
    labels = torch.full_like(batch["input_ids"], -100)
    real = batch["masked_lm_labels"] != -100
    rows = torch.arange(len(labels)).unsqueeze(1).expand_as(real)
    labels[rows[real], batch["masked_positions"][real]] = batch["masked_lm_labels"][real]
    return {"input_ids": batch["input_ids"], "token_type_ids": batch["token_type_ids"],
            "attention_mask": batch["attention_mask"], "labels": labels,
            "next_sentence_label": batch["next_sentence_label"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per model and dtype")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--json", default=None, help="append the results as one JSON line to this file")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--vocab", default=None, help="directory with vocab.txt (default: all-MiniLM-L6-v2's)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    from bertkit.config import BertConfig
    from bertkit.heads import BertForPreTraining
    from bertkit.train import TrainConfig, build_optimizer

    tmp = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    batch, source = make_batch(args.batch_size, args.seq, tmp, Path(args.vocab) if args.vocab else None)
    hbatch = hf_batch(batch)
    batch, hbatch = ({k: v.to(device) for k, v in b.items()} for b in (batch, hbatch))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536)
    bk = BertForPreTraining(config)
    bk.save_pretrained(tmp / "model")
    hf = transformers.BertForPreTraining.from_pretrained(tmp / "model").to(device)
    bk.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # 1. Same weights, same batch, dropout off: the same losses.
    bk.eval(), hf.eval()
    with torch.no_grad():
        a, b = bk(**batch), hf(**hbatch)
    hf_mlm = torch.nn.functional.cross_entropy(b.prediction_logits.flatten(0, 1), hbatch["labels"].flatten())
    hf_nsp = torch.nn.functional.cross_entropy(b.seq_relationship_logits, hbatch["next_sentence_label"])
    print(f"batch: {args.batch_size} x {args.seq} ({source}), {int(batch['attention_mask'].sum())} real tokens, "
          f"{int((batch['masked_lm_labels'] != -100).sum())} MLM targets; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, "
          + (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"))
    print(f"loss  bertkit {a['loss'].item():.6f} (mlm {a['mlm_loss'].item():.6f} nsp {a['nsp_loss'].item():.6f})  "
          f"transformers {b.loss.item():.6f} (mlm {hf_mlm.item():.6f} nsp {hf_nsp.item():.6f})  "
          f"|diff| {abs(a['loss'].item() - b.loss.item()):.2e}")

    # 2. Training steps, alternating between the two models.
    tokens = float(batch["attention_mask"].sum())
    results = {"device": args.device, "batch": [args.batch_size, args.seq], "source": source,
               "loss_bertkit": a["loss"].item(), "loss_transformers": b.loss.item(), "dtypes": {}}
    for dtype in args.dtypes:
        cast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bf16" \
            else contextlib.nullcontext
        runs = {}
        for name, model, inputs in (("bertkit", bk, batch), ("transformers", hf, hbatch)):
            model.train()
            opt = build_optimizer(model, TrainConfig(lr=1e-4), device)  # the engine's, for both

            def step(model=model, inputs=inputs, opt=opt) -> float:
                sync()
                t0 = time.perf_counter()
                with cast():
                    out = model(**inputs)
                loss = out["loss"] if isinstance(out, dict) else out.loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync()
                return time.perf_counter() - t0

            runs[name] = {"step": step, "times": []}
        for _ in range(args.warmup):
            for r in runs.values():
                r["step"]()
        for _ in range(args.steps):
            for r in runs.values():
                r["times"].append(r["step"]())
        med = {n: sorted(r["times"])[len(r["times"]) // 2] for n, r in runs.items()}
        tps = {n: tokens / t for n, t in med.items()}
        ratio = tps["bertkit"] / tps["transformers"]
        print(f"{dtype:5s} train step: bertkit {tps['bertkit']:8.0f} tok/s ({med['bertkit'] * 1000:6.0f} ms)   "
              f"transformers {tps['transformers']:8.0f} tok/s ({med['transformers'] * 1000:6.0f} ms)   "
              f"ratio {ratio:.2f}x")
        results["dtypes"][dtype] = {"bertkit_tok_s": tps["bertkit"], "transformers_tok_s": tps["transformers"],
                                    "ratio": ratio, "bertkit_ms": med["bertkit"] * 1000,
                                    "transformers_ms": med["transformers"] * 1000}
    # 3. The data path: one masked batch of --batch-size instances, bertkit's loader against
    #    transformers' DataCollatorForLanguageModeling (padding + 80/10/10 masking) on the same instances.
    if source == "IMDB":
        results["batch_build_ms"] = batch_build_race(tmp, args.batch_size)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
