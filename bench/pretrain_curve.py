"""Learning race: a Mini BERT pre-trained from scratch on IMDB train text, bertkit vs transformers.

    .venv/bin/python bench/pretrain_curve.py --minutes 30 --out runs/race

Both sides start from the same weights (a Mini preset built by bertkit and saved in the
Hugging Face layout), read the same prepared instances (`bertkit prepare` of IMDB train,
max_seq_length 128) through the same length-grouped, dynamically masked batches, and follow the
same recipe (AdamW lr, warmup then linear decay over --steps, weight decay 0.01, clipping 1.0,
batch 32, fp32). bertkit runs `bertkit pretrain` (the engine, with train.max_minutes as the time
box); transformers runs BertForPreTraining in a plain PyTorch loop. Every --eval-every steps each
side measures MLM and NSP accuracy on the same held-out instances, with the same fixed masks, made
from IMDB *test* reviews; evaluation time is not counted in the clock. The unigram baseline is
the accuracy of always guessing the most frequent held-out target token.

With --parallel (the default) the two runs go side by side, one thread each, for --minutes of
wall-clock: equal hardware for both, half the time of running them one after another.
The curves go to OUT/race.png, the figures to OUT/race.json.

On a GPU (--device cuda) the two runs share the device side by side the same way; there the
engine builds the next batch in a background thread while the GPU works on this one, and the
plain loop builds it in between, as such loops usually do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from pretrain import hf_batch  # bench/pretrain.py: bertkit's MLM targets in transformers' form

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BERTKIT_DATA", ROOT.parent / "shared" / "data"))


def minilm_dir() -> Path:
    from bertkit.hub import resolve

    return resolve("sentence-transformers/all-MiniLM-L6-v2")  # for its bert-base-uncased vocab.txt


def prepare_data(out: Path, heldout_reviews: int) -> None:
    from bertkit.data import prepare

    if not (out / "train" / "meta.json").is_file():
        prepare(minilm_dir(), [DATA / "imdb" / "train.jsonl"], out / "train", max_seq_length=128)
    if not (out / "heldout" / "meta.json").is_file():
        with open(DATA / "imdb" / "test.jsonl", encoding="utf-8") as f:
            # test.jsonl lists negatives first: take every 12th review for both classes and all topics
            lines = [line for i, line in enumerate(f) if i % 12 == 0][:heldout_reviews]
        (out / "heldout.jsonl").write_text("".join(lines), encoding="utf-8")
        prepare(minilm_dir(), [out / "heldout.jsonl"], out / "heldout", max_seq_length=128, seed=7)


def initial_model(out: Path) -> Path:
    from bertkit.config import BertConfig
    from bertkit.heads import BertForPreTraining
    from bertkit.tokenizer import Tokenizer

    path = out / "init"
    if not (path / "model.safetensors").is_file():
        tok = Tokenizer.from_pretrained(out / "train")  # the vocabulary the data was prepared with
        torch.manual_seed(0)
        BertForPreTraining(BertConfig.preset("mini", vocab_size=len(tok.vocab))).save_pretrained(path)
        tok.save_pretrained(path)
    return path


def batches(data_dir: Path, ids: list[int] | None, batch_size: int, seed: int, shuffle: bool):
    from bertkit.data import MaskedBatches, Masker, MaskingConfig, PretrainingData
    from bertkit.tokenizer import Tokenizer

    data = PretrainingData(data_dir)
    tok = Tokenizer.from_pretrained(data_dir)
    masker = Masker(MaskingConfig(), tok.vocab, tok.special_ids, tok.mask_token_id)
    return MaskedBatches(data, ids if ids is not None else list(range(len(data))), batch_size, masker,
                         seed=seed, shuffle=shuffle)


def run_transformers(args, out: Path) -> None:
    """BertForPreTraining in a plain loop: the recipe of `bertkit pretrain`, written the usual way."""
    import transformers

    from bertkit.train import param_groups  # the recipe's decay groups: no decay on biases and LayerNorm

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = transformers.BertForPreTraining.from_pretrained(out / "init").to(device)
    train = batches(out / "train", None, args.batch_size, args.seed, shuffle=True)
    heldout = batches(out / "heldout", list(range(args.eval_instances)), 64, args.seed + 1, shuffle=False)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=args.lr, eps=1e-6, fused=True)
    sched = transformers.get_linear_schedule_with_warmup(opt, args.warmup, args.steps)

    @torch.no_grad()
    def evaluate() -> dict:
        model.eval()
        correct = total = nsp_correct = seqs = 0
        for i in range(len(heldout)):
            b = {k: v.to(device) for k, v in hf_batch(heldout[i]).items()}
            labels, nsp = b.pop("labels"), b.pop("next_sentence_label")
            o = model(**b)
            real = labels != -100
            correct += int((o.prediction_logits.argmax(-1)[real] == labels[real]).sum())
            total += int(real.sum())
            nsp_correct += int((o.seq_relationship_logits.argmax(-1) == nsp).sum())
            seqs += len(labels)
        model.train()
        return {"val_mlm_accuracy": correct / total, "val_nsp_accuracy": nsp_correct / seqs}

    log = open(out / "transformers" / "metrics.jsonl", "w")
    model.train()
    step, elapsed, epoch = 0, 0.0, 0
    while elapsed < args.minutes * 60 and step < args.steps:
        train.set_epoch(epoch)
        for i in range(len(train)):
            t0 = time.perf_counter()
            o = model(**{k: v.to(device) for k, v in hf_batch(train[i]).items()})
            o.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if device.type == "cuda":
                torch.cuda.synchronize()  # charge the step its GPU time
            elapsed += time.perf_counter() - t0
            done = elapsed >= args.minutes * 60 or step >= args.steps
            if step % args.eval_every == 0 or done:
                log.write(json.dumps({"step": step, "elapsed": elapsed, "loss": o.loss.item(), **evaluate()}) + "\n")
                log.flush()
                print(f"transformers step {step} elapsed {elapsed:.0f} s", flush=True)
            if done:
                break
        epoch += 1


def run_bertkit(args, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bertkit.cli", "pretrain", f"data={out / 'train'}", f"eval_data={out / 'heldout'}",
           f"model={out / 'init'}", f"eval_instances={args.eval_instances}", f"batch_size={args.batch_size}",
           f"train.lr={args.lr}", f"train.warmup={args.warmup}", f"train.max_steps={args.steps}",
           f"train.max_minutes={args.minutes}", f"train.eval_every={args.eval_every}",
           f"train.save_every={args.eval_every * 5}", f"train.seed={args.seed}", "train.progress=false",
           f"train.out_dir={out / 'bertkit'}", "train.keep_best=false", "train.log_every=50",
           f"train.device={args.device}"]
    return subprocess.Popen(cmd, env=_env(args))


def _env(args) -> dict:
    env = dict(os.environ)
    if args.parallel:
        env["OMP_NUM_THREADS"] = "1"
    return env


def baselines(out: Path, n: int, seed: int) -> tuple[float, float]:
    """Held-out accuracy of guessing the most frequent target token (MLM) and the majority class (NSP)."""
    held = batches(out / "heldout", list(range(n)), 64, seed + 1, shuffle=False)
    labels = torch.cat([held[i]["masked_lm_labels"].flatten() for i in range(len(held))])
    labels = labels[labels != -100]
    nsp = torch.cat([held[i]["next_sentence_label"] for i in range(len(held))])
    return float(torch.bincount(labels).max()) / len(labels), float(torch.bincount(nsp).max()) / len(nsp)


def read_curve(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "val_mlm_accuracy" in r]


def plot(curves: dict[str, list[dict]], baseline: tuple[float, float], path: Path, minutes: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    for ax, key, title in ((fig.add_subplot(1, 2, 1), "val_mlm_accuracy", "held-out MLM accuracy"),
                           (fig.add_subplot(1, 2, 2), "val_nsp_accuracy", "held-out NSP accuracy")):
        for name, rows in curves.items():
            ax.plot([r["elapsed"] / 60 for r in rows], [r[key] for r in rows], marker="o", ms=3, label=name)
        mlm = key == "val_mlm_accuracy"
        ax.axhline(baseline[0] if mlm else baseline[1], color="grey", ls="--",
                   label="unigram baseline" if mlm else "majority class")
        ax.set_xlabel("training wall-clock (min, evaluation excluded)")
        ax.set_title(title)
        ax.set_xlim(0, minutes)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Mini BERT from scratch on IMDB train, evaluated on IMDB test text")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=3000, help="length of the lr schedule (warmup + linear decay)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-instances", type=int, default=1000)
    ap.add_argument("--heldout-reviews", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both runs)")
    ap.add_argument("--sequential", dest="parallel", action="store_false",
                    help="run one after the other with all threads (twice the wall-clock)")
    ap.add_argument("--out", default="runs/race")
    ap.add_argument("--impl", default=None, help=argparse.SUPPRESS)  # internal: the transformers child
    args = ap.parse_args()
    out = Path(args.out)
    if args.impl == "transformers":
        run_transformers(args, out)
        return
    (out / "transformers").mkdir(parents=True, exist_ok=True)
    prepare_data(out, args.heldout_reviews)
    initial_model(out)
    child = [sys.executable, __file__, *sys.argv[1:], "--impl", "transformers"]
    if args.parallel:
        procs = [run_bertkit(args, out), subprocess.Popen(child, env=_env(args))]
        for p in procs:
            p.wait()
    else:
        run_bertkit(args, out).wait()
        subprocess.run(child, check=True)
    curves = {"bertkit": read_curve(out / "bertkit" / "metrics.jsonl"),
              "transformers": read_curve(out / "transformers" / "metrics.jsonl")}
    baseline = baselines(out, args.eval_instances, args.seed)
    plot(curves, baseline, out / "race.png", args.minutes)
    summary = {"minutes": args.minutes, "parallel": args.parallel, "unigram_baseline": baseline[0],
               "nsp_majority_baseline": baseline[1],
               "threads_each": 1 if args.parallel else torch.get_num_threads()}
    for name, rows in curves.items():
        last = rows[-1]
        summary[name] = {"steps": last["step"], "elapsed_s": last["elapsed"],
                         "mlm_accuracy": last["val_mlm_accuracy"], "nsp_accuracy": last["val_nsp_accuracy"],
                         "curve": [(round(r["elapsed"]), r["step"], round(r["val_mlm_accuracy"], 4),
                                    round(r["val_nsp_accuracy"], 4)) for r in rows]}
        print(f"{name:12s} {last['step']:5d} steps in {last['elapsed'] / 60:.1f} min: held-out MLM accuracy "
              f"{last['val_mlm_accuracy']:.4f}, NSP accuracy {last['val_nsp_accuracy']:.4f}")
    print(f"baselines: unigram (most frequent held-out target) {baseline[0]:.4f}, NSP majority class "
          f"{baseline[1]:.4f}; plot: {out / 'race.png'}")
    (out / "race.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
