"""The main job: the whole BERT story, end to end, on a built-in default.

`bertkit demo` chains the library functions behind the documented subcommands:

  1. data      movie-review snippets from the package registry -> train/validation/test TSV
  2. tokens    WordPiece tokenization of one sentence            (bertkit tokenize)
  3. bat       contextual vectors: "bat" in three sentences      (bertkit.infer.token_vectors)
  4. finetune  all-MiniLM-L6-v2 -> sentiment classifier          (bertkit finetune / evaluate / predict)
  5. pretrain  a tiny BERT from scratch, MLM + NSP               (bertkit prepare / pretrain)
  6. serve     the sentiment model over HTTP, asked through the openai client and plain HTTP (bertkit serve)
  7. report    report.md with the numbers and the training curves

Each step but serve caches its result under the work directory (results.json, and the
data, the fine-tuned model and the shards), so a re-run reuses what is done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from bertkit import io
from bertkit.hub import DEFAULT_MODEL
from bertkit.tasks.settings import FinetuneConfig

# The movie-review snippets (Pang & Lee sentences, scored -4..+4 by human
# raters) ship inside the MIT-licensed vaderSentiment source distribution,
# which any machine that reaches PyPI can fetch.
SNIPPETS_SDIST = "vadersentiment==3.3.2"
SNIPPETS_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _split_of(text: str) -> str:
    """Deterministic split from a hash of the text: stable across runs and machines."""
    u = int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for name, share in SPLITS.items():
        edge += share
        if u < edge:
            return name
    return "test"


def _labelled_by_name(tsv: Path) -> bool:
    """Whether a cached split has this version's labels (earlier versions wrote 0/1)."""
    lines = tsv.read_text(encoding="utf-8").splitlines()[1:2]
    return bool(lines) and lines[0].rsplit("\t", 1)[-1] in LABELS


def fetch_movie_snippets(data_dir: str | Path) -> dict[str, Path]:
    """Download (once), binarise and split the movie snippets into TSV files.

    Writes `<data_dir>/movie_snippets/{train,validation,test}.tsv` with a
    `sentence<TAB>label` header (the SST-2 layout), labels negative/positive. Scores of exactly 0 carry
    no polarity and are dropped; the count is printed, not hidden.
    """
    out = Path(data_dir) / "movie_snippets"
    paths = {s: out / f"{s}.tsv" for s in SPLITS}
    if all(p.exists() for p in paths.values()) and _labelled_by_name(paths["train"]):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--no-binary", ":all:", SNIPPETS_SDIST, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise RuntimeError(f"could not download {SNIPPETS_SDIST} from the package registry: "
                               f"{done.stderr.strip().splitlines()[-1:] or 'no file'}")
        with tarfile.open(sdists[0]) as outer:
            inner_name = next(n for n in outer.getnames()
                              if n.endswith("additional_resources/hutto_ICWSM_2014.tar.gz"))
            inner_bytes = outer.extractfile(inner_name).read()
        with tarfile.open(fileobj=BytesIO(inner_bytes)) as inner:
            raw = inner.extractfile(SNIPPETS_MEMBER).read().decode("utf-8")

    rows: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    dropped = 0
    for lineno, line in enumerate(raw.splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(f"{SNIPPETS_MEMBER}, line {lineno}: expected 3 tab-separated fields, got {len(fields)}")
        score, text = float(fields[1]), fields[2].strip()
        if score == 0 or not text:
            dropped += 1
            continue
        rows[_split_of(text)].append((text, LABELS[score > 0]))
    for split, items in rows.items():
        io.write_text(paths[split], "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in items))
    counts = ", ".join(f"{s} {len(v)}" for s, v in rows.items())
    print(f"movie snippets: {counts}; dropped {dropped} with score 0 or no text")
    return paths


# ---------------------------------------------------------------------------- settings

TOKENIZE_TEXT = "What's going on?"
# The same word in two senses: the cricket bats should be closer to each other than to the cave bat.
BAT_SENTENCES = {
    "cricket 1": "he walked out to the crease holding his bat and faced the first ball.",
    "cricket 2": "she swung the bat hard and hit the ball over the boundary for six.",
    "cave": "a bat flew out of the dark cave at dusk, hunting insects.",
}
NEW_REVIEWS = [
    "A gorgeous, moving film with a terrific cast.",
    "Two hours of my life I will never get back.",
    "The plot is thin, but the actors make it worth watching.",
    "Dull, lifeless and far too long.",
]
LABELS = ("negative", "positive")  # the TSV files' label column, in class-id order
STEPS = ("data", "tokens", "bat", "finetune", "pretrain", "serve", "report")


def _finetune_defaults() -> FinetuneConfig:
    # The classic recipe (AdamW, eps 1e-6, 10% warmup then linear decay, gradient clipping 1.0:
    # bertkit.train's defaults) on a 2-core CPU budget. Two epochs (536 steps) are what fits, so
    # the lr is the top of the BERT paper's grid {5e-5, 3e-5, 2e-5}. Snippets are 27 word pieces
    # on average, 99% under 55: max_length 64 cuts 6 of the 8,561 train snippets.
    return FinetuneConfig(model=DEFAULT_MODEL, epochs=2, lr=5e-5, batch_size=32, warmup=0.1, weight_decay=0.01,
                          max_length=64, seed=42, text_column="sentence", label_column="label")


@dataclass
class DemoPretrain:
    """Step 5: a small BERT pre-trained from scratch on the train snippets."""

    model: str = "tiny"  # a BertConfig preset
    snippets_per_document: int = 8  # snippets are single sentences: group them so NSP has pairs
    seq_length: int = 64  # three snippets or so per instance; 128 would double the cost
    dupe_factor: int = 2  # passes over the corpus with different pairings and cuts (~9k instances)
    steps: int = 300  # one pass over the instances
    lr: float = 1e-3  # a 4M-parameter model, a few hundred steps: higher than BERT-base's 1e-4
    batch_size: int = 32
    eval_instances: int = 256
    seed: int = 42


@dataclass
class DemoConfig:
    """The demo's settings: `bertkit demo --config demo.yaml finetune.lr=3e-5 pretrain.steps=100`.

    `finetune` is a FinetuneConfig as `bertkit finetune` takes it (the demo sets its train_file,
    dev_file and output); its model is also the one steps 2, 3 and 5 use (its vocabulary).
    """

    work_dir: str = "runs/demo"
    finetune: FinetuneConfig = field(default_factory=_finetune_defaults)
    pretrain: DemoPretrain = field(default_factory=DemoPretrain)

    @property
    def model(self) -> str:
        return self.finetune.model

    @classmethod
    def fast(cls) -> DemoConfig:
        """A small budget that runs every step in a minute or two (tests, a first look)."""
        cfg = cls()
        # 32 steps: smaller batches and a higher lr than the full run, or MiniLM's untrained
        # pooler keeps the classifier at chance for the whole budget.
        cfg.finetune = dataclasses.replace(cfg.finetune, epochs=1, max_train_examples=512, max_eval_examples=128,
                                           batch_size=16, lr=2e-4)
        cfg.pretrain = dataclasses.replace(cfg.pretrain, dupe_factor=1, steps=10, eval_instances=64)
        return cfg


# ---------------------------------------------------------------------------- small helpers


class Results:
    """Every step's numbers, kept in <work_dir>/results.json (written atomically after each step)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = _read_json(path) or {}

    def get(self, step: str) -> dict | None:
        return self.data.get(step)

    def put(self, step: str, value: dict) -> None:
        self.data[step] = value
        io.write_json(self.path, self.data)


def _read_json(path: Path) -> dict | None:
    """A cache file's contents; None when it is absent or unreadable (the step then runs again)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _model_dir(name: str) -> Path:
    from bertkit.hub import resolve

    return resolve(name)


# ---------------------------------------------------------------------------- the steps


def show_tokenization(model: str = DEFAULT_MODEL, text: str = TOKENIZE_TEXT) -> dict:
    """WordPiece pieces and ids of `text`, with [CLS] and [SEP] as the model sees them."""
    from bertkit.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(_model_dir(model))
    ids = tok.encode(text).input_ids
    out = {"text": text, "tokens": tok.convert_ids_to_tokens(ids), "input_ids": ids}
    print(f"{text!r} -> {out['tokens']}")
    print(f"ids: {ids}")
    return out


def contextual_bat(model: str = DEFAULT_MODEL, sentences: dict[str, str] = BAT_SENTENCES, word: str = "bat") -> dict:
    """Cosine similarity of `word`'s last-layer vectors across sentences (each pair once)."""
    from bertkit.infer import cosine_matrix, token_vectors

    names = list(sentences)
    sims = cosine_matrix(token_vectors([sentences[n] for n in names], word, str(_model_dir(model))))
    pairs = [{"a": names[i], "b": names[j], "cosine": float(sims[i, j])}
             for i in range(len(names)) for j in range(i + 1, len(names))]
    for p in pairs:
        print(f"cos({p['a']}, {p['b']}) = {p['cosine']:.4f}")
    return {"word": word, "sentences": sentences, "pairs": pairs}


def finetune_sentiment(cfg: FinetuneConfig, files: dict[str, Path], out_dir: Path) -> dict:
    """Fine-tune on the snippets' train split, pick the best epoch on validation, score it on test
    and classify NEW_REVIEWS. Reuses out_dir when it holds a run with the same settings."""
    from bertkit.tasks.finetune import evaluate, finetune
    from bertkit.tasks.predictor import Predictor

    cfg = dataclasses.replace(cfg, train_file=str(files["train"]), dev_file=str(files["validation"]),
                              output=str(out_dir), resume=False)
    where = ("output", "resume", "progress", "device", "data_dir", "train_file", "dev_file")
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in where}
    cache = out_dir / "demo.json"
    done = _read_json(cache)
    if done and done.get("settings") == settings and (out_dir / "best" / "config.json").is_file():
        print(f"reusing the fine-tuned model in {out_dir / 'best'} (delete {cache} to train again)")
        return done
    t0 = time.perf_counter()
    shutil.rmtree(out_dir, ignore_errors=True)  # the demo's own folder: a run with other settings starts over
    summary = finetune(cfg)
    predictor = Predictor.from_pretrained(out_dir)  # its best/
    test = evaluate(predictor, dev_file=files["test"], text_column=cfg.text_column, label_column=cfg.label_column,
                    max_examples=cfg.max_eval_examples, seed=cfg.seed)  # the test file stands in as the scored split
    n_test = sum(1 for _ in io.read_lines(files["test"])) - 1
    test["examples"] = min(n_test, cfg.max_eval_examples or n_test)
    print(f"test accuracy {test['accuracy']:.4f} on {test['examples']:,} snippets "
          f"(f1 {test['f1']:.4f}, loss {test['loss']:.4f})")
    predictions = []
    for text, p in zip(NEW_REVIEWS, predictor(NEW_REVIEWS)):
        predictions.append({"text": text, "label": p["label"], "score": p["score"]})
        print(f"{p['label']:>8} {p['score']:.3f}  {text}")
    done = {"settings": settings, "summary": summary, "test": test, "predictions": predictions,
            "model_dir": summary["best_dir"], "seconds": time.perf_counter() - t0}
    io.write_json(cache, done)
    return done


def write_snippet_corpus(train_file: Path, out: Path, per_document: int) -> int:
    """The train snippets as a pre-training corpus: one per line, a blank line after every
    `per_document` consecutive snippets (a pseudo-document). Returns the document count."""
    from bertkit.tasks.readers import read_table

    texts = [ex.text for ex in read_table(train_file, text_column="sentence", label_column="label",
                                          labels=LABELS)]
    docs = [texts[i:i + per_document] for i in range(0, len(texts), per_document)]
    io.write_text(out, "\n\n".join("\n".join(d) for d in docs) + "\n")
    return len(docs)


def pretrain_tiny(cfg: DemoConfig, train_file: Path, out_dir: Path) -> dict:
    """MLM + NSP pre-training of a small BERT from random weights on the snippet text.

    The vocabulary is the fine-tuned model's (bert-base-uncased WordPiece). Shards are
    reused when their settings match; so is a finished run with the same settings.
    """
    from bertkit.data import prepare
    from bertkit.pretrain import PretrainConfig, pretrain
    from bertkit.train import TrainConfig

    pt = cfg.pretrain
    prep = dict(vocab=cfg.model, snippets_per_document=pt.snippets_per_document,
                max_seq_length=pt.seq_length, dupe_factor=pt.dupe_factor, seed=pt.seed)
    run = dict(prep, model=pt.model, steps=pt.steps, lr=pt.lr, batch_size=pt.batch_size,
               eval_instances=pt.eval_instances)
    cache = out_dir / "demo.json"
    done = _read_json(cache)
    if done and done.get("settings") == run:
        print(f"reusing the pre-training run in {out_dir / 'run'} (delete {cache} to train again)")
        return done
    t0 = time.perf_counter()
    shards = out_dir / "shards"
    meta_file, prep_file = shards / "meta.json", shards / "demo-prepare.json"
    if meta_file.is_file() and _read_json(prep_file) == prep:
        meta = json.loads(meta_file.read_text())
        print(f"reusing {meta['stats']['instances']:,} prepared instances in {shards}")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        corpus = out_dir / "corpus.txt"
        n_docs = write_snippet_corpus(train_file, corpus, pt.snippets_per_document)
        print(f"corpus: {n_docs} pseudo-documents of {pt.snippets_per_document} consecutive train snippets")
        meta = prepare(_model_dir(cfg.model), [corpus], shards, max_seq_length=pt.seq_length,
                       dupe_factor=pt.dupe_factor, seed=pt.seed, workers=1, fmt="sentences")
        io.write_json(prep_file, prep)
    n_eval = min(pt.eval_instances, meta["stats"]["instances"] // 5)
    steps = pt.steps
    train_cfg = TrainConfig(lr=pt.lr, warmup=0.05, max_steps=steps, eval_every=max(1, steps // 5),
                            save_every=None, log_every=max(1, min(20, steps // 10)), seed=pt.seed,
                            out_dir=str(out_dir / "run"))
    model_config = PretrainConfig(data=str(shards), model=pt.model, batch_size=pt.batch_size,
                                  eval_instances=n_eval, train=train_cfg)
    result = pretrain(model_config)
    logs = [r for r in result.history if "loss" in r]
    evals = [{k: r[k] for k in ("step", "val_mlm_loss", "val_nsp_loss", "val_mlm_accuracy", "val_nsp_accuracy")}
             for r in result.history if "val_loss" in r]
    done = {"settings": run, "instances": meta["stats"]["instances"], "eval_instances": n_eval,
            "next_instances": meta["stats"]["next_instances"], "documents": meta["stats"]["documents"],
            "first_loss": {"step": logs[0]["step"], "loss": logs[0]["loss"]},
            "last_loss": {"step": logs[-1]["step"], "loss": logs[-1]["loss"]},
            "evals": evals, "train_seconds": logs[-1]["elapsed"], "out_dir": str(out_dir / "run"),
            "seconds": time.perf_counter() - t0}
    print(f"pre-training loss (MLM + NSP): {done['first_loss']['loss']:.3f} (mean of steps 1-{logs[0]['step']}) "
          f"-> {done['last_loss']['loss']:.3f} (at step {logs[-1]['step']}); random guessing is "
          f"ln({meta['vocab_size']}) + ln 2 = {_chance_loss(meta['vocab_size']):.2f}")
    io.write_json(cache, done)
    return done


def _chance_loss(vocab_size: int) -> float:
    import math

    return math.log(vocab_size) + math.log(2)


def serve_classifier(run: Path, texts: Sequence[str] = tuple(NEW_REVIEWS[:2])) -> dict:
    """`bertkit serve` on the fine-tuned model, on a free loopback port: the openai client lists it,
    plain HTTP asks it about `texts` (/predict), and the server stops."""
    from bertkit.serve import describe, serve_and_query

    answers = serve_and_query(run, texts)
    print(describe(answers))
    return {"answers": answers}


# ---------------------------------------------------------------------------- the report


def write_report(results: dict, work_dir: Path) -> Path:
    """report.md: one page with every number of the run and the engine's training curves."""
    r = results
    lines = ["# BERT, end to end: bertkit demo", ""]
    if "data" in r:
        d = r["data"]
        lines += ["## Data", "",
                  f"{sum(d['counts'].values()):,} movie-review snippets (Pang & Lee sentences with human "
                  f"sentiment ratings, from the `{SNIPPETS_SDIST}` source distribution), score > 0 -> positive, "
                  f"split by a hash of the text: " + ", ".join(f"{k} {v:,}" for k, v in d["counts"].items()) + ".",
                  ""]
    if "tokens" in r:
        t = r["tokens"]
        lines += ["## Tokenization (WordPiece, bert-base-uncased vocabulary)", "",
                  f"`{t['text']}` ->", "",
                  "| " + " | ".join(f"`{x}`" for x in t["tokens"]) + " |",
                  "|" + "---|" * len(t["tokens"]),
                  "| " + " | ".join(str(i) for i in t["input_ids"]) + " |", ""]
    if "bat" in r:
        b = r["bat"]
        lines += ["## Contextual vectors", "",
                  f"The last-layer vector of `{b['word']}` in three sentences; a static word embedding "
                  "would give cosine 1.0 for every pair.", ""]
        lines += [f"- {name}: \"{text}\"" for name, text in b["sentences"].items()] + [""]
        lines += ["| pair | cosine |", "|---|---:|"]
        lines += [f"| {p['a']} / {p['b']} | {p['cosine']:.4f} |" for p in b["pairs"]] + [""]
    if "finetune" in r:
        f = r["finetune"]
        s, st = f["summary"], f["settings"]
        lines += ["## Fine-tuning for sentiment", "",
                  f"`{st['model']}` + a classification head on the pooled [CLS] vector, "
                  f"{s['train_examples']:,} train snippets, "
                  f"{st['epochs']} epoch(s), AdamW lr {st['lr']:g} (eps 1e-6, weight decay 0.01), 10% warmup "
                  f"then linear decay, gradient clipping 1.0, batch {st['batch_size']}, max length "
                  f"{st['max_length']}. The best epoch on validation is kept.", "",
                  "| epoch | train loss | train accuracy | val loss | val accuracy | seconds |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {e['epoch']} | {e['train_loss']:.4f} | {e['train_accuracy']:.4f} | {e['val_loss']:.4f} | "
                  f"{e['val_accuracy']:.4f} | {e['epoch_seconds']:.0f} |" for e in s["epochs"]]
        lines += ["", f"**Test accuracy: {f['test']['accuracy']:.4f}** (F1 {f['test']['f1']:.4f}, "
                  f"{f['test']['examples']:,} test snippets). Model (Hugging Face layout): "
                  f"`{f['model_dir']}`.", "",
                  f"![fine-tuning curves]({_rel(Path(s['best_dir']).parent / 'curves.png', work_dir)})", "",
                  "New sentences:", "", "| prediction | probability | text |", "|---|---:|---|"]
        lines += [f"| {p['label']} | {p['score']:.3f} | {p['text']} |" for p in f["predictions"]] + [""]
    if "pretrain" in r:
        p, st = r["pretrain"], r["pretrain"]["settings"]
        lines += ["## Pre-training a tiny BERT from scratch (MLM + NSP)", "",
                  f"BERT `{st['model']}` preset from random weights. The snippets are single sentences, so "
                  f"every {st['snippets_per_document']} consecutive train snippets form one pseudo-document "
                  f"({p['documents']:,} documents): IsNext pairs are neighbouring snippets, which in this file share "
                  "their polarity but not their movie, so NSP has little to learn (compare its accuracy below with "
                  "the NotNext share). "
                  f"{p['instances']:,} instances of up to {st['max_seq_length']} tokens (dupe factor "
                  f"{st['dupe_factor']}, {p['next_instances']:,} IsNext: always answering NotNext scores "
                  f"{1 - p['next_instances'] / p['instances']:.3f}), {p['eval_instances']} held out; "
                  f"{st['steps']} steps of batch {st['batch_size']}, lr {st['lr']:g}, "
                  f"{p['train_seconds']:.0f} s.", "",
                  f"**Train loss (MLM + NSP): {p['first_loss']['loss']:.3f} (steps 1-{p['first_loss']['step']}) -> "
                  f"{p['last_loss']['loss']:.3f} (step {p['last_loss']['step']}).**", "",
                  "| step | held-out MLM loss | MLM accuracy | NSP loss | NSP accuracy |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {e['step']} | {e['val_mlm_loss']:.3f} | {e['val_mlm_accuracy']:.3f} | {e['val_nsp_loss']:.3f} | "
                  f"{e['val_nsp_accuracy']:.3f} |" for e in p["evals"]]
        lines += ["", f"![pre-training curves]({_rel(Path(p['out_dir']) / 'curves.png', work_dir)})", ""]
    if "serve" in r:
        from bertkit.serve import describe

        lines += ["## Serving", "", "`bertkit serve` on the fine-tuned model, on a free loopback port: the `openai` "
                  "client lists the model, plain HTTP asks `/predict`, then the server stops.", "", "```",
                  describe(r["serve"]["answers"]), "```", ""]
    timed = [(step, r[step]["seconds"]) for step in STEPS if "seconds" in (r.get(step) or {})]
    if timed:
        lines += ["## Time", "", "Seconds each step took when it last did its work (a re-run reuses cached "
                  "results); 2 CPU threads.", "", "| step | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timed]
        lines += [f"| **all steps** | **{sum(v for _, v in timed):.1f}** |", ""]
    lines += ["## The same steps as commands", "",
              f"One step of this run: `bertkit demo --steps STEP` ({', '.join(STEPS)}). "
              "With the general commands:", "", "```", *_commands(r, work_dir), "```", ""]
    path = work_dir / "report.md"
    io.write_text(path, "\n".join(lines))
    return path


def _commands(r: dict, work_dir: Path) -> list[str]:
    """The general `bertkit` commands that reproduce the fine-tuning and pre-training steps."""
    data, out = work_dir / "data" / "movie_snippets", []
    if "finetune" in r:
        st, ft = r["finetune"]["settings"], work_dir / "finetune"
        cols = "--text-column sentence --label-column label"
        limit = f" --max-train-examples {st['max_train_examples']}" if st["max_train_examples"] else ""
        limit += f" --max-eval-examples {st['max_eval_examples']}" if st["max_eval_examples"] else ""
        out += [f"bertkit finetune --model {st['model']} --train-file {data}/train.tsv --dev-file "
                f"{data}/validation.tsv {cols} --epochs {st['epochs']} --lr {st['lr']:g} --batch-size "
                f"{st['batch_size']} --max-length {st['max_length']} --seed {st['seed']}{limit} --output {ft}",
                f"bertkit evaluate --model {ft} --dev-file {data}/test.tsv {cols} --seed {st['seed']}"
                + (f" --max-examples {st['max_eval_examples']}" if st["max_eval_examples"] else ""),
                f"bertkit predict --model {ft} --text \"{NEW_REVIEWS[0]}\""]
    if "pretrain" in r:
        st, p = r["pretrain"]["settings"], work_dir / "pretrain"
        steps = st["steps"]
        out += [f"bertkit prepare --vocab {_model_dir(st['vocab'])} --input {p}/corpus.txt --output {p}/shards "
                f"--format sentences --max-seq-length {st['max_seq_length']} --dupe-factor {st['dupe_factor']} "
                f"--seed {st['seed']} --workers 1",
                f"bertkit pretrain data={p}/shards model={st['model']} batch_size={st['batch_size']} "
                f"eval_instances={r['pretrain']['eval_instances']} train.lr={st['lr']:g} train.warmup=0.05 "
                f"train.max_steps={steps} train.eval_every={max(1, steps // 5)} "
                f"train.log_every={max(1, min(20, steps // 10))} train.save_every=null train.seed={st['seed']} "
                f"train.out_dir={p}/run"]
    if "serve" in r:
        out += [f"bertkit serve {work_dir / 'finetune'} --port 8080   # then POST /predict, or open http://127.0.0.1:8080/"]
    return out


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(base).resolve())


# ---------------------------------------------------------------------------- the whole story


def run_demo(cfg: DemoConfig | None = None, steps: tuple[str, ...] = STEPS) -> dict:
    """Run `steps` in order under cfg.work_dir; every result lands in results.json and report.md."""
    cfg = cfg or DemoConfig()
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown demo step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results = Results(work / "results.json")
    files = {s: work / "data" / "movie_snippets" / f"{s}.tsv" for s in SPLITS}

    def data() -> dict:
        paths = fetch_movie_snippets(work / "data")
        counts = {s: sum(1 for _ in io.read_lines(p)) - 1 for s, p in paths.items()}
        print(", ".join(f"{s} {n:,}" for s, n in counts.items()) + f" snippets in {work / 'data'}")
        return {"counts": counts}

    actions: dict[str, tuple[str, Callable[[], dict]]] = {
        "data": ("movie-review snippets -> train/validation/test", data),
        "tokens": ("WordPiece tokenization", lambda: show_tokenization(cfg.model)),
        "bat": ("contextual vectors: the same word, different meanings", lambda: contextual_bat(cfg.model)),
        "finetune": (f"fine-tune {cfg.model} for sentiment",
                     lambda: finetune_sentiment(cfg.finetune, files, work / "finetune")),
        "pretrain": (f"pre-train a {cfg.pretrain.model} BERT from scratch (MLM + NSP)",
                     lambda: pretrain_tiny(cfg, files["train"], work / "pretrain")),
        "serve": ("serve the fine-tuned classifier over HTTP and ask it through the openai client and plain HTTP",
                  lambda: serve_classifier(work / "finetune")),
        "report": ("report.md with the numbers and the training curves", lambda: None),
    }
    if "serve" in steps and "finetune" not in steps and not (work / "finetune" / "best").is_dir():
        steps = tuple(s for s in STEPS if s in ("data", "finetune") or s in steps)  # it serves that model
    if any(s in steps for s in ("finetune", "pretrain")) and not all(p.is_file() for p in files.values()):
        steps = tuple(s for s in STEPS if s == "data" or s in steps)  # they need the data
    t_all = time.perf_counter()
    for n, step in enumerate(steps, 1):
        title, action = actions[step]
        print(f"\n== [{n}/{len(steps)}] {step}: {title}", flush=True)
        t0 = time.perf_counter()
        if step == "report":
            print(f"wrote {write_report(results.data, work)}")
        else:
            result = action()
            result.setdefault("seconds", time.perf_counter() - t0)  # the long steps time themselves (cache)
            results.put(step, result)
    total = time.perf_counter() - t_all
    print(f"\ndemo done in {total:.1f} s ({total / 60:.1f} min); report: {work / 'report.md'}")
    return results.data
