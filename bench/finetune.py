"""Fine-tuning benchmark: bertkit's tasks from all-MiniLM-L6-v2, and SST-2 against transformers' Trainer.

    flock /tmp/bertkit-bench.lock .venv/bin/python bench/finetune.py --tasks rte
    flock /tmp/bertkit-bench.lock .venv/bin/python bench/finetune.py --tasks sst2 --hf \\
        --max-train-examples 2000 --epochs 1

Each task runs `bertkit.tasks.finetune.finetune` (the engine) and reports the
task's dev metric of the best epoch, the train time per epoch and the wall clock.
With --hf, SST-2 is also trained by transformers' Trainer in the same process on
the same token ids (the tokenizer's parity tests prove them equal), with the same
model, seed and recipe (AdamW eps 1e-6, weight decay 0.01, linear warmup 10% and
decay, clipping at 1.0): once with its default random sampler and once with
group_by_length. Timings compare train time only (no evaluation, no saving).
Sequential runs on a shared machine meet different loads, so --step-compare N
also times N train steps of both models alternating on the same batches.
Results are appended as JSON lines to --results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"sst2": ("accuracy", 0.90), "mrpc": ("f1", None), "rte": ("accuracy", None), "cola": ("mcc", None),
         "stsb": ("spearman", None), "conll2003": ("f1", None), "imdb": ("accuracy", None), "squad": ("f1", None),
         "qnli": ("accuracy", None)}


def minilm_dir() -> Path:
    from bertkit.hub import resolve

    return resolve("sentence-transformers/all-MiniLM-L6-v2")


def run_bertkit(task: str, args, out: Path) -> dict:
    from bertkit.tasks.finetune import FinetuneConfig, evaluate, finetune

    t0 = time.perf_counter()
    s = finetune(FinetuneConfig(
        task=task, model=str(minilm_dir()), output=str(out / task), epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, max_train_examples=args.max_train_examples,
        max_eval_examples=args.max_eval_examples, max_length=args.max_length, seed=args.seed,
        data_dir=args.data_dir, mixed_precision="bf16" if args.bf16 else "no", freeze_encoder=args.freeze_encoder,
        progress=not args.quiet))
    wall = time.perf_counter() - t0
    result = {"impl": "bertkit (frozen encoder)" if args.freeze_encoder else "bertkit", "task": task,
              "metric": s["metric"], "best": s["best"], "epochs": s["epochs"],
              "train_examples": s["train_examples"], "dev_examples": s["dev_examples"],
              "train_seconds": s["train_seconds"], "wall_seconds": wall, "settings": s["settings"]}
    if task == "conll2003":  # model picked on testa (dev); the reported figure is testb (test)
        result["test"] = evaluate(out / task, "conll2003", "test", data_dir=args.data_dir)
    return result


def sst2_features(args, split: str) -> list[dict]:
    """SST-2 model inputs as bertkit's fine-tuning builds them (the same subset, the same ids)."""
    from bertkit.tasks.datasets import TASKS
    from bertkit.tasks.finetune import subset
    from bertkit.tokenizer import Tokenizer

    task = TASKS["sst2"]
    n = args.max_train_examples if split == "train" else args.max_eval_examples
    examples = subset(task.examples(split, args.data_dir), n, args.seed)
    prepared = task.kind.features(examples, Tokenizer.from_pretrained(minilm_dir()),
                                  args.max_length or task.recipe.max_length)
    return [f for p in prepared for f in p.features]


def run_hf_trainer(args, sampling: str, out: Path) -> dict:
    """SST-2 with transformers' Trainer on bertkit's features (identical token ids)."""
    import transformers
    from transformers import (
        BertForSequenceClassification,
        BertTokenizerFast,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from bertkit.tasks.metrics import accuracy

    train, dev = sst2_features(args, "train"), sst2_features(args, "dev")
    transformers.set_seed(args.seed)
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=2)
    targs = TrainingArguments(
        output_dir=str(out / f"hf_{sampling}"), learning_rate=args.lr, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, warmup_steps=0.1,
        weight_decay=0.01, adam_epsilon=1e-6, max_grad_norm=1.0, seed=args.seed, eval_strategy="no",
        save_strategy="no", logging_strategy="no", report_to="none", use_cpu=True, bf16=args.bf16,
        train_sampling_strategy=sampling, dataloader_num_workers=0, disable_tqdm=args.quiet,
        optim="adamw_torch")
    trainer = Trainer(model=model, args=targs, train_dataset=train,
                      data_collator=DataCollatorWithPadding(BertTokenizerFast.from_pretrained(str(minilm_dir()))))
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    logits = trainer.predict(dev).predictions
    acc = accuracy(logits.argmax(-1), [f["labels"] for f in dev])
    return {"impl": f"transformers.Trainer ({sampling})", "task": "sst2", "metric": "accuracy", "best": acc,
            "train_examples": len(train), "dev_examples": len(dev),
            "train_seconds": train_seconds}


def step_compare(args, steps: int) -> dict:
    """Train-step time, bertkit vs transformers, alternating step by step on the same batches.

    Sequential runs on a shared machine see different loads; alternating single
    steps (forward, backward, clip, AdamW) lets any load hit both alike.
    """
    import statistics

    from transformers import BertForSequenceClassification as HFModel

    from bertkit.batching import Batches
    from bertkit.heads import BertForSequenceClassification

    batches = list(Batches(sst2_features(args, "train"), args.batch_size, shuffle=True, seed=args.seed))[:steps]
    torch.manual_seed(args.seed)
    models = {"bertkit": BertForSequenceClassification.from_pretrained(minilm_dir()),
              "transformers": HFModel.from_pretrained(str(minilm_dir()), num_labels=2)}
    times: dict[str, list[float]] = {name: [] for name in models}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=args.lr, eps=1e-6, weight_decay=0.01)
            for name, m in models.items()}
    for m in models.values():
        m.train()
    for batch in batches:
        for name, m in models.items():
            t0 = time.perf_counter()
            out = m(**batch)
            loss = out["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
    tokens = sum(float(b["attention_mask"].sum()) for b in batches)
    med = {name: statistics.median(t[1:]) for name, t in times.items()}  # the first step warms up
    total = {name: sum(t) for name, t in times.items()}
    return {"impl": "step-compare", "steps": len(batches), "batch_size": args.batch_size, "tokens": tokens,
            "median_step_s": med, "total_s": total, "tokens_per_s": {n: tokens / total[n] for n in total},
            "bertkit/transformers": total["bertkit"] / total["transformers"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="rte", help=f"comma-separated, from {', '.join(GOALS)} ('' for none)")
    p.add_argument("--hf", action="store_true", help="also train SST-2 with transformers' Trainer (2 samplers)")
    p.add_argument("--hf-first", action="store_true",
                   help="run the Trainer before bertkit (swap the order to see drift in a shared machine's load)")
    p.add_argument("--step-compare", type=int, default=0, metavar="STEPS",
                   help="also time STEPS SST-2 train steps, bertkit and transformers alternating")
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--max-eval-examples", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4, help="1e-4: a 6-layer MiniLM wants more than BERT-base's 2e-5")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train only the head on frozen BERT features (the paper's feature-based use; try --lr 1e-3)")
    p.add_argument("--data-dir", default=os.environ.get("BERTKIT_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--out", default=None, help="where checkpoints go (default: a temporary folder)")
    p.add_argument("--results", default=None, help="append one JSON line per run to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="bertkit-ft-") if args.out is None else None
    out = Path(args.out or tmp.name)
    results = []
    hf = []
    if args.hf and args.hf_first:
        hf = [run_hf_trainer(args, sampling, out) for sampling in ("random", "group_by_length")]
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        r = run_bertkit(task, args, out)
        results.append(r)
        goal = GOALS.get(task, (None, None))[1]
        extra = f" | test {r['test']}" if "test" in r else ""
        print(f"{task}: bertkit {r['metric']} {r['best']:.4f}" + (f" (goal {goal})" if goal else "")
              + f" | train {r['train_seconds']:.1f} s, wall {r['wall_seconds']:.1f} s, "
              f"{r['train_examples']} train / {r['dev_examples']} dev examples{extra}", flush=True)
    if args.hf:
        ours = next((r for r in results if r["task"] == "sst2"), None)
        if ours is None:
            ours = run_bertkit("sst2", args, out)
            results.append(ours)
        if not hf:
            hf = [run_hf_trainer(args, sampling, out) for sampling in ("random", "group_by_length")]
        for r in hf:
            results.append(r)
            print(f"sst2: {r['impl']} accuracy {r['best']:.4f} | train {r['train_seconds']:.1f} s | "
                  f"bertkit/HF train time {ours['train_seconds'] / r['train_seconds']:.2f}x "
                  f"(bertkit accuracy {ours['best']:.4f}, train {ours['train_seconds']:.1f} s)", flush=True)
    if args.step_compare:
        r = step_compare(args, args.step_compare)
        results.append(r)
        print(f"train step ({r['steps']} SST-2 batches of {r['batch_size']}, alternating): "
              f"bertkit {r['total_s']['bertkit']:.1f} s ({r['tokens_per_s']['bertkit']:.0f} tokens/s, median "
              f"{r['median_step_s']['bertkit'] * 1000:.0f} ms) | transformers {r['total_s']['transformers']:.1f} s "
              f"({r['tokens_per_s']['transformers']:.0f} tokens/s, median "
              f"{r['median_step_s']['transformers'] * 1000:.0f} ms) | bertkit/transformers "
              f"{r['bertkit/transformers']:.2f}x", flush=True)
    if args.results:
        with open(args.results, "a") as f:
            for r in results:
                f.write(json.dumps({**r, "argv": sys.argv[1:]}) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
