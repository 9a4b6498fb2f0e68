"""Tokenizer throughput: bertkit vs Rust `tokenizers` vs transformers' pure-Python tokenizer.

Same process, same inputs, outputs checked equal (ids and offsets) on every
text, so this is also the full-coverage parity check (all 50,000 IMDB reviews).
Every bertkit run starts COLD: a fresh Tokenizer with empty caches. Each
contender runs `--repeat` times; the best time counts (other jobs share the CPU).

    flock /tmp/bertkit-bench.lock .venv/bin/python bench/tokenizer.py [--sets imdb,sst2] [--repeat 2]

The Rust library runs encode_batch on all cores (2 here). The per-set table runs
bertkit in one process (workers=1); the race that follows it gives bertkit
`--workers` processes on the IMDB reviews: encode_batch cold (a fresh Tokenizer:
starting the pool is timed too) and warm (the same pool again), `bertkit tokenize`
on the same reviews as a file, and what sending results between processes costs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def load_sets() -> dict[str, list]:
    def tsv(path, *cols):
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        idx = [rows[0].index(c) for c in cols]
        return [tuple(r[i] for i in idx) for r in rows[1:] if len(r) == len(rows[0])]

    imdb = [json.loads(line)["text"] for split in ("train", "test")
            for line in open(DATA / "imdb" / f"{split}.jsonl", encoding="utf-8")]
    sst2 = [r[0] for split in ("train", "dev", "test")
            for r in tsv(DATA / "glue" / "SST-2" / f"{split}.tsv", "sentence")]
    squad = json.loads((DATA / "squad_v1.1" / "dev-v1.1.json").read_text(encoding="utf-8"))["data"]
    squad = [q["question"] for a in squad for p in a["paragraphs"] for q in p["qas"]] + [
        p["context"] for a in squad for p in a["paragraphs"]]
    conll = []
    for name in ("eng.train.txt", "eng.testa.txt", "eng.testb.txt"):
        words: list[str] = []
        for line in (DATA / "conll2003" / name).read_text(encoding="utf-8").split("\n") + [""]:
            if not line.strip() or line.startswith("-DOCSTART-"):
                if words:
                    conll.append(" ".join(words))
                words = []
            else:
                words.append(line.split(" ")[0])
    pairs = [p for split in ("train", "dev", "test")
             for p in tsv(DATA / "glue" / "RTE" / f"{split}.tsv", "sentence1", "sentence2")
             + tsv(DATA / "glue" / "MRPC" / f"{split}.tsv", "#1 String", "#2 String")]
    return {"imdb": imdb, "sst2": sst2, "squad": squad, "conll": conll, "rte+mrpc pairs": pairs}


def n_bytes(texts) -> int:
    return sum(len(t.encode("utf-8")) for x in texts for t in ((x,) if isinstance(x, str) else x))


def best_of(repeat: int, make, run):
    """(best seconds, output of the last run) of run(make()); make() (loading a tokenizer) is not timed."""
    best, out = float("inf"), None
    for _ in range(repeat):
        tok = make()
        t = time.perf_counter()
        out = run(tok)
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="imdb,sst2,squad,conll,rte+mrpc pairs")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--imdb-reviews", type=int, default=None, help="only the first N IMDB reviews (default: all)")
    ap.add_argument("--python-reviews", type=int, default=1000,
                    help="IMDB reviews for the (slow) pure-Python reference")
    ap.add_argument("--workers", type=int, default=2, help="processes for the race on IMDB (1: no race)")
    args = ap.parse_args()

    from tokenizers import BertWordPieceTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    from bertkit.hub import resolve
    from bertkit.tokenizer import Tokenizer

    model_dir = resolve("sentence-transformers/all-MiniLM-L6-v2")
    vocab = str(model_dir / "vocab.txt")

    def make_ours():  # cold: a fresh Tokenizer has empty caches
        return Tokenizer.from_pretrained(model_dir)

    def make_rust():
        return BertWordPieceTokenizer(vocab, lowercase=True)

    sets = load_sets()
    sets["imdb"] = sets["imdb"][: args.imdb_reviews]
    print(f"python {sys.version.split()[0]}, best of {args.repeat}, bertkit cold (fresh Tokenizer each run)")
    print(f"{'set':16} {'texts':>7} {'MB':>7} | {'bertkit MB/s':>12} {'lines/s':>9} | {'rust MB/s':>9} "
          f"{'lines/s':>9} {'+to-py MB/s':>11} | {'ratio':>6} {'ratio*':>6} | parity | bertkit +to-py, warm")
    for name in args.sets.split(","):
        texts = sets[name]
        mb = n_bytes(texts) / 1e6

        def ours(tok):  # the same call as Rust's: one encode_batch over all texts
            return tok.encode_batch(texts, truncation=False, workers=1)

        def rust_to_python(tok):  # what a Python caller gets: lists of ids and offsets
            return [(e.ids, e.offsets) for e in tok.encode_batch(texts)]

        def ours_to_python(tok):  # the same for bertkit, whose lists are also built on access
            return [(e.input_ids, e.offsets) for e in tok.encode_batch(texts, truncation=False, workers=1)]

        t_rust, ref = best_of(args.repeat, make_rust, lambda tok: tok.encode_batch(texts))
        t_ours, got = best_of(args.repeat, make_ours, ours)
        t_rust_py, _ = best_of(1, make_rust, rust_to_python)
        t_ours_py, _ = best_of(1, make_ours, ours_to_python)
        warm = make_ours()
        ours(warm)  # fills its caches: the warm figure shows what the cache buys after a first pass
        t_warm, _ = best_of(1, lambda: warm, ours)
        same = all(o.input_ids == r.ids and o.offsets == r.offsets and o.token_type_ids == r.type_ids
                   for o, r in zip(got, ref)) and len(got) == len(ref)
        print(f"{name:16} {len(texts):7d} {mb:7.2f} | {mb / t_ours:12.2f} {len(texts) / t_ours:9.0f} | "
              f"{mb / t_rust:9.2f} {len(texts) / t_rust:9.0f} {mb / t_rust_py:11.2f} | "
              f"{t_rust / t_ours:5.2f}x {t_rust_py / t_ours_py:5.2f}x | {'identical' if same else 'DIFFERENT'} | "
              f"{mb / t_ours_py:.2f} MB/s, warm {mb / t_warm:.2f} MB/s",
              flush=True)
        if not same:
            return 1

    if args.workers > 1 and not race_workers(sets["imdb"], args.workers, args.repeat, model_dir, make_rust):
        return 1

    # transformers' pure-Python BertTokenizer (BertTokenizerLegacy): no offsets, so ids only.
    texts = sets["imdb"][: args.python_reviews]
    mb = n_bytes(texts) / 1e6
    t_py, py_ids = best_of(1, lambda: BertTokenizerLegacy(vocab),
                           lambda tok: [tok.convert_tokens_to_ids(tok.tokenize(t)) for t in texts])
    t_ours, got = best_of(args.repeat, make_ours, lambda tok: tok.encode_batch(texts, truncation=False, workers=1))
    t_rust, _ = best_of(args.repeat, make_rust, lambda tok: tok.encode_batch(texts))
    same = all(o.input_ids[1:-1] == p for o, p in zip(got, py_ids))
    print(f"\nfirst {len(texts)} IMDB reviews ({mb:.2f} MB), all cold: bertkit {mb / t_ours:.2f} MB/s, "
          f"rust {mb / t_rust:.2f} MB/s, transformers pure-Python {mb / t_py:.2f} MB/s; "
          f"bertkit/python {t_py / t_ours:.1f}x, bertkit/rust {t_rust / t_ours:.2f}x; ids "
          f"{'identical' if same else 'DIFFERENT'}")
    print("ratio = rust encode_batch time / bertkit encode_batch time (offset tuples built on access by both); "
          "ratio* = the same with every encoding's ids and offsets read into Python lists, on both sides")
    return 0 if same else 1


def race_workers(texts: list[str], workers: int, repeat: int, model_dir: Path, make_rust) -> bool:
    """bertkit in 1 and in `workers` processes vs Rust on the same reviews; True when every output is identical.

    Besides wall time it counts CPU time (this process, and the worker processes once they
    have exited): on a loaded machine the wall time of parallel work says little, while the
    CPU total shows what the processes cost in all (efficiency = one process's CPU / the total).
    """
    import gc
    import pickle
    import resource

    from bertkit.tokenizer import _CHUNK_CHARS, Tokenizer, _contiguous, _flatten, tokenize_file

    def workers_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def run(n: int, warm: bool) -> tuple[float, float, list]:
        """(best wall seconds, CPU seconds of the last cold run in all processes, output)."""
        best, cpu, out = float("inf"), 0.0, None
        for _ in range(repeat):
            tok = Tokenizer.from_pretrained(model_dir)
            if warm:  # a second call on the same Tokenizer: its pool and the workers' caches are kept
                tok.encode_batch(texts, truncation=False, workers=n)
            here, there = time.process_time(), workers_cpu()
            t = time.perf_counter()
            out = tok.encode_batch(texts, truncation=False, workers=n)
            best = min(best, time.perf_counter() - t)
            tok.close()  # the workers exit: their CPU time is counted
            cpu = time.process_time() - here + workers_cpu() - there
        return best, cpu, out

    mb = n_bytes(texts) / 1e6
    print(f"\nIMDB, {len(texts)} reviews ({mb:.2f} MB) across processes; load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores")
    t_rust, ref = best_of(repeat, make_rust, lambda tok: tok.encode_batch(texts))
    runs = {(n, warm): run(n, warm) for n in (1, workers) for warm in (False, True)}
    same = all(len(out) == len(ref) and all(
        o.input_ids == r.ids and o.offsets == r.offsets and o.token_type_ids == r.type_ids for o, r in zip(out, ref))
        for _, _, out in runs.values())
    for warm in (False, True):
        (t1, cpu1, _), (tn, cpun, _) = runs[1, warm], runs[workers, warm]
        cpu = f"CPU {cpu1:.2f} s vs {cpun:.2f} s in all (efficiency {cpu1 / cpun:.2f}); " if not warm else ""
        print(f"  encode_batch {'warm' if warm else 'cold'}: workers=1 {mb / t1:.2f} MB/s, workers={workers} "
              f"{mb / tn:.2f} MB/s ({t1 / tn:.2f}x one worker; {cpu}rust {mb / t_rust:.2f} MB/s, so "
              f"workers={workers} is {t_rust / tn:.2f}x rust); {'identical' if same else 'DIFFERENT'}")

    # What the workers' jobs add, timed in this process (warm caches, collector paused as in encode_batch):
    # flattening windows to packed ints (in a worker), pickling through the pipe, rebuilding Encodings here.
    tok = Tokenizer.from_pretrained(model_dir)
    options = tok._options(None, False, False, True, 0, False)
    tok.encode_batch(texts, truncation=False, workers=1)
    steps = [0.0] * 4
    rebuilt, size = [], 0
    gc.disable()
    for job in _contiguous(texts, [len(t) for t in texts], _CHUNK_CHARS):
        t0 = time.perf_counter()
        windows = tok._windows_of(job, options)
        t1 = time.perf_counter()
        flat = _flatten(windows, with_offsets=True)
        t2 = time.perf_counter()
        sent = pickle.dumps(flat, protocol=pickle.HIGHEST_PROTOCOL)
        flat = pickle.loads(sent)
        t3 = time.perf_counter()
        rebuilt += tok._from_flat(flat, options)
        t4 = time.perf_counter()
        size += len(sent)
        for i, dt in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            steps[i] += dt
    gc.enable()
    same = same and rebuilt == runs[1, False][2]
    print(f"  workers' jobs ({size / 1e6:.0f} MB sent): flatten {steps[1]:.2f} s + pickle {steps[2]:.2f} s + rebuild "
          f"{steps[3]:.2f} s, against {steps[0]:.2f} s tokenizing warm and {runs[1, False][0]:.2f} s cold; rebuilt "
          f"{'identical' if rebuilt == runs[1, False][2] else 'DIFFERENT'}")

    # bertkit tokenize: the same reviews as lines of a file, JSON lines out.
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "imdb.txt"
        src.write_text("".join(" ".join(t.split()) + "\n" for t in texts), encoding="utf-8")
        seconds, outputs = {}, {}
        for n in (1, workers):
            out = Path(tmp) / f"out{n}.jsonl"
            seconds[n], _ = best_of(repeat, lambda: None,
                                    lambda _: tokenize_file(model_dir, src, out, workers=n, progress=False))
            outputs[n] = out.read_bytes()
        same_file = outputs[1] == outputs[workers]
        print(f"  bertkit tokenize (JSON lines out, cold): workers=1 {mb / seconds[1]:.2f} MB/s, workers={workers} "
              f"{mb / seconds[workers]:.2f} MB/s ({seconds[1] / seconds[workers]:.2f}x); output bytes "
              f"{'identical' if same_file else 'DIFFERENT'}; load average now {os.getloadavg()[0]:.2f}")
    return same and same_file


if __name__ == "__main__":
    sys.exit(main())
