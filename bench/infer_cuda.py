"""Embedding throughput on a GPU: bertkit vs transformers' BertModel vs sentence-transformers.

    python bench/infer_cuda.py [--vocab DIR] [--sst2 2000] [--imdb 400]

bench/infer.py's method on a CUDA device: identical weights (built by bertkit, saved in the
Hugging Face layout, loaded by each library), the very same length-sorted batches for the model
race (batch 128, max 128 tokens; the device is synchronised around every batch so each side is
charged its own work), contenders alternating batch by batch, after an untimed pass over every
batch (the first call of each shape loads and picks kernels: without it, whichever contender
meets a bf16 shape first pays ~10x). Modes: fp32 (TF32 off, torch's
default), bf16 weights on both sides, and transformers under bf16 autocast. Then end to end,
texts in and vectors out: bertkit's Embedder(device="cuda") (its Python tokenizer included)
against SentenceTransformer.encode on the same device. Figures are real tokens per second.
Models: a MiniLM-shaped (6 x 384) and a Base-shaped (12 x 768) encoder, random weights: speed
does not depend on the values, and no download is needed.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bertkit.config import BertConfig
from bertkit.heads import BertModel
from bertkit.infer import Embedder
from bertkit.tokenizer import Tokenizer
from infer import DATA, bertkit_runner, cosine_min, hf_runner, load_texts, make_batches, race  # bench/infer.py

warnings.filterwarnings("ignore")
SHAPES = {"MiniLM-L6 shape": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                  intermediate_size=1536),
          "Base shape": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default=None, help="directory with vocab.txt (default: all-MiniLM-L6-v2's)")
    ap.add_argument("--sst2", type=int, default=2000)
    ap.add_argument("--imdb", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    import transformers
    from sentence_transformers import SentenceTransformer

    from bertkit.hub import resolve
    from infer import MINILM

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tokenizer = Tokenizer.from_pretrained(args.vocab or resolve(MINILM))
    texts = load_texts(args.sst2, args.imdb)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}; torch {torch.__version__}, transformers {transformers.__version__}; data {DATA}")
    report = []
    for label, shape in SHAPES.items():
        d = Path(f"/tmp/bench-infer-cuda/{label.split()[0]}")
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=len(tokenizer.vocab), **shape)).save_pretrained(d)
        tokenizer.save_pretrained(d)
        ours = BertModel.from_pretrained(d).eval().to(device)
        ours_bf16 = BertModel.from_pretrained(d, dtype="bf16").eval().to(device)
        theirs = transformers.BertModel.from_pretrained(d).eval().to(device)
        theirs_bf16 = transformers.BertModel.from_pretrained(d, dtype=torch.bfloat16).eval().to(device)
        print(f"\n## {label} (HF attention: {theirs.config._attn_implementation})")
        contenders = {"bertkit fp32": bertkit_runner(ours), "transformers fp32": hf_runner(theirs),
                      "bertkit bf16": bertkit_runner(ours_bf16), "transformers bf16": hf_runner(theirs_bf16),
                      "transformers autocast": hf_runner(theirs, autocast=True, device_type=device.type)}
        for data, items in texts.items():
            batches = [{k: v.to(device) for k, v in b.items()}
                       for b in make_batches(tokenizer, items, args.batch_size, args.max_length)]
            real = int(sum(b["attention_mask"].sum() for b in batches))
            with torch.inference_mode():  # warm-up on every shape: cuBLAS picks and loads kernels per shape
                for run in contenders.values():
                    for b in batches:
                        run(b)
            seconds, outs = race(contenders, batches, sync)
            print(f"### {data}: {len(items)} texts, {len(batches)} batches, {real} real tokens")
            for who, s in seconds.items():
                ref = f"transformers {who.split()[-1]}" if who.startswith("bertkit") else who
                print(f"  {who:22} {real / s:10.0f} tok/s  x{seconds[ref] / s:5.2f} vs {ref}  "
                      f"(min cos to fp32 transformers {cosine_min(outs[who], outs['transformers fp32']):.5f})")
                report.append({"model": label, "data": data, "who": who, "tok_s": real / s,
                               "ratio": seconds[ref] / s, "vs": ref})
        # End to end: texts in, vectors out, tokenization included.
        every = texts["sst2"] + texts["imdb"]
        st = SentenceTransformer(str(d), device=str(device))
        st.max_seq_length = args.max_length
        ends = {"sentence-transformers fp32": lambda: st.encode(every, batch_size=args.batch_size)}
        for dtype in ("fp32", "bf16"):
            e = Embedder.from_pretrained(d, dtype=dtype, max_length=args.max_length, device=args.device)
            ends[f"bertkit Embedder {dtype}"] = lambda e=e: e(every, batch_size=args.batch_size)
        tokens = sum(len(tokenizer.encode(t, max_length=args.max_length, return_offsets=False).input_ids)
                     for t in every)
        seconds, outs = {}, {}
        for who, run in ends.items():
            run()  # warm-up: kernels, allocator
            sync()
            t = time.perf_counter()
            outs[who] = np.asarray(run())
            sync()
            seconds[who] = time.perf_counter() - t
        ref = "sentence-transformers fp32"
        print(f"### end to end, {len(every)} texts, {tokens} tokens")
        for who, s in seconds.items():
            print(f"  {who:28} {tokens / s:10.0f} tok/s  x{seconds[ref] / s:5.2f} vs {ref}  "
                  f"(min cos {cosine_min(outs[who], outs[ref]):.5f})")
            report.append({"model": label, "data": "e2e", "who": who, "tok_s": tokens / s,
                           "ratio": seconds[ref] / s, "vs": ref})
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": report}, indent=1))


if __name__ == "__main__":
    main()
