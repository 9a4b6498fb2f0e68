"""Embedding throughput: bertkit vs transformers' BertModel vs sentence-transformers, fp32 / bf16 / int8.

Same process, same inputs: both encoders get the very same length-sorted,
collated batches (batching.length_batches + collate, batch 32, max 128
tokens), with identical weights, and the two run batch by batch in turn so
that other jobs on the machine slow both alike. Figures are REAL tokens per
second (padding excluded), with the model FLOP utilisation (MFU) against the
matmul peak of this CPU for that dtype, measured first.

    flock /tmp/bertkit-bench.lock .venv/bin/python bench/infer.py [--sst2 1000] [--imdb 200]

bf16 runs on --bf16-batches evenly spread batches per data set (emulated on AVX2 CPUs, hence slow).
Models: all-MiniLM-L6-v2 (real weights) and a randomly initialised
bert-base-sized model (its texts are cut to a quarter: it is ~8x the work).
Peak memory is measured in fresh subprocesses (VmHWM), one per contender.
Mode onnx races, on the same batches, bertkit's torch path fp32 / int8 and its ONNX backend
(bertkit.export + OnnxModel) fp32 / int8 against ONNX Runtime on a plain export of transformers'
BertModel (fp32, the same int8 quantization, and fp32 after onnxruntime.transformers.optimizer's
attention / bias+GELU / residual+LayerNorm fusions), all against transformers fp32 (needs the onnx extra).
--clock cpu times the calling thread's CPU time instead of the wall clock: with --threads 1 on a
busy machine it leaves out the time other jobs hold the core.
--accuracy MODEL_DIR instead scores a fine-tuned classifier in each dtype and as ONNX fp32 / int8
(int8's accuracy cost).
"""

from __future__ import annotations

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bertkit.batching import collate, length_batches  # noqa: E402
from bertkit.config import BertConfig  # noqa: E402
from bertkit.heads import BertModel  # noqa: E402
from bertkit.hub import resolve  # noqa: E402
from bertkit.infer import Embedder, pool  # noqa: E402
from bertkit.precision import DTYPES, cast_model  # noqa: E402
from bertkit.tokenizer import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BERTKIT_DATA", ROOT.parent / "shared" / "data"))
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
warnings.filterwarnings("ignore")


# ---------------------------------------------------------------- peaks and FLOPs

def peaks(n: int = 2048, reps: int = 5) -> dict[str, float]:
    """Best-of-`reps` [n x n] @ [n x n] rate per dtype (GFLOP/s, GOP/s for int8), through the ops the models use.

    On a shared machine this undershoots the true peak (MFU can then exceed 100%):
    main() measures it again after the runs and prints both."""
    x = torch.randn(n, n)
    fp32 = torch.nn.Linear(n, n, bias=False)
    bf16 = torch.nn.Linear(n, n, bias=False).to(torch.bfloat16)
    int8 = cast_model(torch.nn.Sequential(torch.nn.Linear(n, n, bias=False)), "int8")
    xb = x.to(torch.bfloat16)
    out = {}
    with torch.inference_mode():
        for name, f in (("fp32", lambda: fp32(x)), ("bf16", lambda: bf16(xb)), ("int8", lambda: int8(x))):
            f()
            best = min(_seconds(f) for _ in range(reps))
            out[name] = 2 * n**3 / best / 1e9
    return out


def _seconds(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def useful_flops(config: BertConfig, lengths: list[int]) -> float:
    """Matmul FLOPs on real tokens: 2 x non-embedding weights per token, plus attention's
    QK^T and PV (4 x seq x hidden per token per layer)."""
    h, L, i = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    weights = L * (4 * h * h + 2 * h * i)
    return float(sum(n * (2 * weights + 4 * n * h * L) for n in lengths))


# ---------------------------------------------------------------- inputs

def load_texts(n_sst2: int, n_imdb: int) -> dict[str, list[str]]:
    lines = (DATA / "glue" / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1 : n_sst2 + 1]
    with open(DATA / "imdb" / "test.jsonl", encoding="utf-8") as f:
        imdb = [json.loads(next(f))["text"] for _ in range(n_imdb)]
    return {"sst2": [line.split("\t")[0] for line in lines], "imdb": imdb}


def make_batches(tokenizer: Tokenizer, texts: list[str], batch_size: int, max_length: int) -> list[dict]:
    feats = [{"input_ids": e.input_ids, "attention_mask": e.attention_mask}
             for e in (tokenizer.encode(t, max_length=max_length, return_offsets=False) for t in texts)]
    return [collate([feats[i] for i in idx])
            for idx in length_batches([len(f["input_ids"]) for f in feats], batch_size)]


# ---------------------------------------------------------------- contenders

def bertkit_runner(model):
    def run(batch):
        h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return pool(h, batch["attention_mask"], "mean")
    return run


def hf_runner(model, autocast: bool = False, device_type: str = "cpu"):
    def run(batch):
        ctx = torch.autocast(device_type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return pool(h, batch["attention_mask"], "mean")
    return run


def race(runners: dict, batches: list[dict], sync=lambda: None,
         clock=time.perf_counter) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Seconds per contender over all batches, run in turn batch by batch; and their outputs.
    sync: waits for the device (torch.cuda.synchronize on a GPU, where calls return before the work is done).
    clock: time.perf_counter (wall), or time.thread_time (this thread's CPU time; one thread only)."""
    seconds = dict.fromkeys(runners, 0.0)
    outputs = {k: [] for k in runners}
    with torch.inference_mode():
        for name, run in runners.items():  # warm-up (first-call allocations, oneDNN primitive creation)
            run(batches[-1])
        for batch in batches:
            for name, run in runners.items():
                sync()
                t = clock()
                outputs[name].append(run(batch))
                sync()
                seconds[name] += clock() - t
    return seconds, {k: torch.cat(v).float().cpu().numpy() for k, v in outputs.items()}


# ---------------------------------------------------------------- ONNX contenders

def onnx_contenders(ours, ours_int8, theirs, folder: Path) -> dict:
    """{name: (run, peak)} for bertkit's ONNX backend and ONNX Runtime on transformers' own export."""
    from bertkit.export import export_onnx, quantize
    from bertkit.onnx_model import OnnxModel

    export_onnx(ours, folder / "bertkit")
    export_onnx(ours, folder / "bertkit-int8", int8=True)
    hf = folder / "transformers"
    hf.mkdir(parents=True, exist_ok=True)
    export_transformers(theirs, hf / "model.onnx")
    quantize(hf / "model.onnx", hf / "int8.onnx")  # the very settings bertkit's --int8 uses
    fused = fuse_transformers(hf / "model.onnx", hf / "fused.onnx", theirs.config)
    return {
        "bertkit fp32": (bertkit_runner(ours), "fp32"),
        "bertkit int8": (bertkit_runner(ours_int8), "int8"),
        "bertkit ONNX fp32": (bertkit_runner(OnnxModel.from_pretrained(folder / "bertkit")), "fp32"),
        "bertkit ONNX int8": (bertkit_runner(OnnxModel.from_pretrained(folder / "bertkit-int8")), "int8"),
        "ORT fp32 (transformers export)": (ort_runner(hf / "model.onnx"), "fp32"),
        "ORT int8 (transformers export)": (ort_runner(hf / "int8.onnx"), "int8"),
        **({"ORT fp32 (transformers, fused)": (ort_runner(fused), "fp32")} if fused else {}),
    }


def export_transformers(model, path: Path) -> None:
    """transformers' BertModel through torch.onnx.export, as a user would do it (eager attention, the
    pattern ONNX Runtime's fusions know), with dynamic batch and sequence axes."""
    import transformers

    eager = transformers.BertModel.from_pretrained(model.name_or_path, attn_implementation="eager").eval()

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = eager

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2023, 102, 0, 0, 0]])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        torch.onnx.export(LastHidden().eval(), (ids, (ids > 0).long(), torch.zeros_like(ids)), str(path),
                          dynamo=False, opset_version=17, input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]})


def fuse_transformers(path: Path, out: Path, config) -> Path | None:
    """ONNX Runtime's offline BERT optimizer (Attention, SkipLayerNormalization, BiasGelu), or None if absent."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError:
        return None
    optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                   hidden_size=config.hidden_size).save_model_to_file(str(out))
    return out


def ort_runner(path: Path):
    """An ONNX Runtime session with every graph optimization, as many threads as torch; mean-pooled output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch):
        ids = batch["input_ids"].numpy()
        h = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": batch["attention_mask"].numpy(),
                                                "token_type_ids": np.zeros_like(ids)})[0]
        return pool(torch.from_numpy(h), batch["attention_mask"], "mean")
    return run


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


# ---------------------------------------------------------------- memory (fresh processes)

def memory_child(who: str, model_dir: str, dtype: str, n_sst2: int, n_imdb: int, batch_size: int,
                 max_length: int) -> None:
    """Run inference once; print MB of peak RSS above the RSS after imports and data."""
    tokenizer = Tokenizer.from_pretrained(model_dir)
    texts = load_texts(n_sst2, n_imdb)
    batches = [b for t in texts.values() if t for b in make_batches(tokenizer, t, batch_size, max_length)]
    if who == "transformers":
        from transformers import BertModel as HFBertModel  # the import's memory goes into the baseline

        base = peak_rss_mb()
        run = hf_runner(HFBertModel.from_pretrained(model_dir).eval(), autocast=dtype == "bf16")
        loaded = peak_rss_mb()
    else:
        base = peak_rss_mb()
        run = bertkit_runner(BertModel.from_pretrained(model_dir, dtype=dtype))  # converted as read
        loaded = peak_rss_mb()
    with torch.inference_mode():
        for b in batches:
            run(b)
    peak = peak_rss_mb()
    print(json.dumps({"base_mb": base, "peak_mb": peak, "model_and_run_mb": peak - base, "load_mb": loaded - base}))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that over
    from the parent across fork + exec, so a child of this big process would inherit its peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_memory(who: str, model_dir: str, dtype: str, args) -> dict:
    # One full batch of long reviews reaches the peak; the short SST-2 batches never exceed it.
    cmd = [sys.executable, __file__, "--memory-child", who, "--model-dir", model_dir, "--dtype", dtype,
           "--sst2", "0", "--imdb", str(args.batch_size), "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- the benchmark

def bench_model(label: str, model_dir: str, texts: dict[str, list[str]], pk: dict, args, report: list,
                cut: int, onnx_dir: Path) -> None:
    import transformers

    tokenizer = Tokenizer.from_pretrained(model_dir)
    ours = BertModel.from_pretrained(model_dir)
    theirs = transformers.BertModel.from_pretrained(model_dir).eval()
    config = ours.config
    print(f"\n## {label}  (layers {config.num_hidden_layers}, hidden {config.hidden_size}; "
          f"HF attention: {theirs.config._attn_implementation})")
    ours_bf16, ours_int8 = cast_model(ours, "bf16"), cast_model(ours, "int8")
    # mode -> {contender: (run, the peak its MFU is measured against)}; the last one is the reference.
    modes = {
        "fp32": {"bertkit fp32": (bertkit_runner(ours), "fp32"), "transformers fp32": (hf_runner(theirs), "fp32")},
        "bf16": {"bertkit bf16 weights": (bertkit_runner(ours_bf16), "bf16"),
                 "bertkit under autocast": (hf_runner(ours, autocast=True), "bf16"),
                 "transformers autocast": (hf_runner(theirs, autocast=True), "bf16")},
        "int8": {"bertkit int8": (bertkit_runner(ours_int8), "int8"),
                 "transformers fp32": (hf_runner(theirs), "fp32")},
    }
    if "onnx" in args.modes:
        modes["onnx"] = {**onnx_contenders(ours, ours_int8, theirs, onnx_dir),
                         "transformers fp32": (hf_runner(theirs), "fp32")}
    for data, items in texts.items():
        batches = make_batches(tokenizer, items, args.batch_size, args.max_length)
        lengths = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
        real, padded = sum(lengths), sum(b["input_ids"].numel() for b in batches)
        print(f"### {data}: {len(items)} texts, {len(batches)} batches, {real} real tokens "
              f"(+{100 * (padded - real) / real:.1f}% padding), mean length {real / len(items):.0f}")
        for mode, contenders in modes.items():
            if mode not in args.modes:
                continue
            if mode == "bf16" and args.bf16_batches:  # Base gets a quarter of them too
                keep = max(1, args.bf16_batches // cut)
                run_batches = batches[:: max(1, -(-len(batches) // keep))]
            else:
                run_batches = batches
            run_lengths = [int(n) for b in run_batches for n in b["attention_mask"].sum(1)]
            run_real, run_flops = sum(run_lengths), useful_flops(config, run_lengths)
            seconds, outs = race({k: run for k, (run, _) in contenders.items()}, run_batches,
                                 clock=time.thread_time if args.clock == "cpu" else time.perf_counter)
            ref_name = list(contenders)[-1]
            for name, s in seconds.items():
                rate = run_real / s
                mfu = run_flops / s / (pk[contenders[name][1]] * 1e9)
                ratio = seconds[ref_name] / s
                agree = cosine_min(outs[name], outs[ref_name])
                print(f"  {mode:4} {name:26} {rate:9.0f} tok/s  MFU {100 * mfu:5.1f}%  "
                      f"x{ratio:5.2f} vs {ref_name}  (min cos to it {agree:.5f})", flush=True)
                report.append({"model": label, "data": data, "mode": mode, "who": name, "tokens": run_real,
                               "seconds": s, "tok_s": rate, "mfu": mfu, "ratio": ratio, "vs": ref_name,
                               "min_cos": agree})


def bench_end_to_end(label: str, model_dir: str, texts: list[str], args, report: list) -> None:
    """Texts in, vectors out: bertkit's Embedder (its Python tokenizer included) vs sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_dir, device="cpu")
    st.max_seq_length = args.max_length
    embedders = {dtype: Embedder.from_pretrained(model_dir, max_length=args.max_length, dtype=dtype)
                 for dtype in ("fp32", "int8")}
    tokenizer = embedders["fp32"].tokenizer
    real = sum(len(tokenizer.encode(t, max_length=args.max_length, return_offsets=False).input_ids) for t in texts)
    runs = {"sentence-transformers encode fp32": lambda: st.encode(texts, batch_size=args.batch_size),
            **{f"bertkit embed {d}": (lambda e=e: e(texts, batch_size=args.batch_size))
               for d, e in embedders.items()}}
    st.encode(texts[:8])  # warm-up
    for e in embedders.values():
        e(texts[:8])
    seconds, outs = {}, {}
    for name, run in runs.items():
        t = time.perf_counter()
        outs[name] = np.asarray(run())
        seconds[name] = time.perf_counter() - t
    ref = "sentence-transformers encode fp32"
    print(f"### end to end (tokenization included), {label}, {len(texts)} texts, {real} tokens")
    for name, s in seconds.items():
        print(f"  {name:36} {real / s:9.0f} tok/s  x{seconds[ref] / s:5.2f} vs {ref}  "
              f"(min cos {cosine_min(outs[name], outs[ref]):.5f})", flush=True)
        report.append({"model": label, "data": "sst2+imdb", "mode": "e2e", "who": name, "tokens": real,
                       "seconds": s, "tok_s": real / s, "ratio": seconds[ref] / s, "vs": ref})


def accuracy(model_dir: str) -> None:
    """fp32 vs int8 vs bf16, and ONNX fp32 vs int8, on a fine-tuned classifier's dev set (its own task)."""
    from bertkit.export import export
    from bertkit.tasks.datasets import get_task
    from bertkit.tasks.predictor import Predictor

    loads = {dtype: (lambda dtype=dtype: Predictor.from_pretrained(model_dir, dtype=dtype)) for dtype in DTYPES}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for dtype in ("fp32", "int8"):
                folder = export(model_dir, Path(tmp) / dtype, int8=dtype == "int8")
                loads[f"ONNX {dtype}"] = lambda folder=folder: Predictor.from_pretrained(folder, backend="onnx")
        except ModuleNotFoundError as e:
            print(f"(no ONNX rows: {e})")
        preds, scores = {}, {}
        for name, load in loads.items():
            predictor = load()
            task = get_task(predictor.model.config.extra["finetuning_task"])
            prepared = predictor.task_kind.features(task.examples("dev", DATA), predictor.tokenizer,
                                                    predictor.max_length, predictor.doc_stride)
            preds[name] = predictor.run(prepared, 64)
            scores[name] = predictor.task_kind.scores(preds[name], [p.example for p in prepared])
            agree = np.mean([a["label"] == b["label"] for a, b in zip(preds[name], preds["fp32"])])
            lost = 100 * (scores["fp32"]["accuracy"] - scores[name]["accuracy"]) if "accuracy" in scores[name] else 0
            print(f"{task.name} dev, {name}: {scores[name]}  (predictions equal to fp32: {100 * agree:.2f}%; "
                  f"accuracy points lost: {lost:.2f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sst2", type=int, default=1000, help="SST-2 train sentences (MiniLM; Base gets a quarter)")
    ap.add_argument("--imdb", type=int, default=200, help="IMDB test reviews (MiniLM; Base gets a quarter)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--modes", default="fp32,bf16,int8,onnx")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the calling thread's CPU time (use with --threads 1 on a busy machine)")
    ap.add_argument("--models", default="minilm,base")
    ap.add_argument("--bf16-batches", type=int, default=8,
                    help="bf16 runs on this many evenly spread batches only (0: all): it is emulated on AVX2")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="skip the speed runs (memory is load-proof)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--accuracy", default=None, metavar="MODEL_DIR",
                    help="only score a fine-tuned classifier on its dev set in fp32, int8, bf16 and ONNX fp32 / int8")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.accuracy:
        accuracy(args.accuracy)
        return
    if args.memory_child:
        memory_child(args.memory_child, args.model_dir, args.dtype, args.sst2, args.imdb, args.batch_size,
                     args.max_length)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, quantized engine {torch.backends.quantized.engine}")
    pk = {} if args.memory_only else peaks()
    if pk:
        print("peak 2048x2048 matmul: " + ", ".join(f"{k} {v:.1f} G{'OP' if k == 'int8' else 'FLOP'}/s"
                                                 for k, v in pk.items()))
    report: list = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        if "minilm" in args.models:
            dirs["minilm"] = ("all-MiniLM-L6-v2", str(resolve(MINILM)), 1)
        if "base" in args.models:
            base = BertModel(BertConfig.preset("base"))
            base.save_pretrained(tmp, tokenizer=Tokenizer.from_pretrained(resolve(MINILM)))
            dirs["base"] = ("bert-base (random init)", tmp, 4)
        for key, (label, model_dir, cut) in dirs.items():
            texts = load_texts(args.sst2 // cut, args.imdb // cut)
            if not args.memory_only:
                bench_model(label, model_dir, texts, pk, args, report, cut, Path(tmp) / f"onnx-{key}")
                bench_end_to_end(label, model_dir, [t for v in texts.values() for t in v], args, report)
            if not args.no_memory:
                print(f"### peak memory, {label}: one batch of {args.batch_size} IMDB reviews "
                      f"at {args.max_length} tokens, "
                      "a fresh process each; MB above the RSS after imports + data")
                for who, dtype in (("transformers", "fp32"), ("transformers", "bf16"), ("bertkit", "fp32"),
                                   ("bertkit", "bf16"), ("bertkit", "int8")):
                    m = measure_memory(who, model_dir, dtype, args)
                    print(f"  {who:12} {dtype}: {m['model_and_run_mb']:7.0f} MB "
                          f"(of which loading {m['load_mb']:.0f} MB; "
                          f"peak RSS {m['peak_mb']:.0f} MB)",
                          flush=True)
                    report.append({"model": label, "mode": "memory", "who": f"{who} {dtype}", **m})
    after = {} if args.memory_only else peaks()
    print("peak again after the runs: " + ", ".join(f"{k} {v:.1f}" for k, v in after.items())
          + "  (MFU above used the first figures)")
    if args.json:
        Path(args.json).write_text(json.dumps({"peaks": pk, "peaks_after": after, "rows": report}, indent=1))


if __name__ == "__main__":
    main()
