"""Vocabulary learning benchmark: bertkit's WordPiece learner vs the Hugging Face trainer.

    flock /tmp/bertkit-bench.lock .venv/bin/python bench/vocab.py

Learns a 30,000-token lowercase vocabulary from the IMDB train reviews with
bertkit (likelihood criterion, and the count(ab)/(count(a)*count(b)) ratio
criterion on the same word counts) and with `tokenizers`' BertWordPieceTokenizer
trainer (which, despite the name, learns BPE merges), all with the same special
tokens, lowercasing and min_frequency. Reports learning wall time, then
tokenizes the IMDB test reviews with every vocabulary using one tokenizer
implementation (bertkit's, parity-tested against the Rust one) and reports
tokens per word, the [UNK] rate and the share of words kept whole.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from tokenizers import BertWordPieceTokenizer

from bertkit.tokenizer import SPECIAL_TOKENS, Tokenizer, basic_tokenize
from bertkit.vocab import count_words, learn_wordpiece, read_texts, special_tokens

ROOT = Path(__file__).resolve().parents[1]
IMDB = Path(os.environ.get("BERTKIT_DATA", ROOT.parent / "shared" / "data")) / "imdb"


def evaluate(vocab_dir: Path, texts: list[str]) -> dict[str, float]:
    """Tokens per word, [UNK] per word and words kept whole (one piece), over `texts`."""
    tok = Tokenizer.from_pretrained(vocab_dir)
    words = tokens = unks = whole = 0
    for text in texts:
        pieces = tok.tokenize(text)
        words += len(basic_tokenize(text))
        tokens += len(pieces)
        unks += pieces.count("[UNK]")
        # A word's first piece is bare and the rest start with "##".
        starts = [not p.startswith("##") for p in pieces] + [True]
        whole += sum(s and nxt and p != "[UNK]" for p, s, nxt in zip(pieces, starts, starts[1:]))
    return {"vocab": len(tok), "tokens_per_word": tokens / words, "unk_per_word": unks / words, "unks": unks,
            "whole_words": whole / words, "words": words}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=30000)
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="word-counting processes for bertkit")
    ap.add_argument("--train-texts", type=int, default=None, help="learn from the first N train reviews")
    ap.add_argument("--test-texts", type=int, default=None, help="evaluate on the first N test reviews")
    ap.add_argument("--out", default=None, help="keep the vocabularies here (default: a temp dir)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bertkit-bench-vocab-"))
    out.mkdir(parents=True, exist_ok=True)
    train_file = IMDB / "train.jsonl"
    if args.train_texts:  # a smaller corpus, for a quick run
        subset = list(read_texts(train_file))[: args.train_texts]
        train_file = out / "train.jsonl"
        train_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in subset), encoding="utf-8")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)")

    # bertkit: count words (worker processes), then learn, per criterion.
    t0 = time.perf_counter()
    counts = count_words([train_file], workers=args.workers, progress=False)
    t_count = time.perf_counter() - t0
    print(f"bertkit word counting: {t_count:.1f} s ({len(counts)} distinct words, {sum(counts.values())} words)")
    timings = {}
    for criterion in ("likelihood", "ratio"):
        t0 = time.perf_counter()
        vocab = learn_wordpiece(counts, args.vocab_size, special_tokens(), args.min_frequency, criterion)
        timings[criterion] = time.perf_counter() - t0
        Tokenizer({t: i for i, t in enumerate(vocab)}).save_pretrained(out / f"bertkit-{criterion}")
        print(f"bertkit learn ({criterion}): {timings[criterion]:.1f} s, "
              f"total with counting {t_count + timings[criterion]:.1f} s")

    # Hugging Face: the same texts, specials, lowercasing and min_frequency.
    texts = list(read_texts(train_file))
    hf = BertWordPieceTokenizer(lowercase=True)
    t0 = time.perf_counter()
    hf.train_from_iterator(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                           special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    t_hf = time.perf_counter() - t0
    (out / "hf").mkdir(parents=True, exist_ok=True)
    hf.save_model(str(out / "hf"))
    (out / "hf" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    print(f"HF trainer (Rust, BPE merges, multithreaded): {t_hf:.1f} s")
    print(f"ratio bertkit(likelihood, counting+learning) / HF: {(t_count + timings['likelihood']) / t_hf:.1f}x")

    test = list(read_texts(IMDB / "test.jsonl"))[: args.test_texts]
    print(f"\nIMDB test, {len(test)} reviews, all tokenized by bertkit's tokenizer:")
    print(f"{'vocabulary':<22}{'size':>7}{'tokens/word':>13}{'[UNK]s':>8}{'[UNK]/word':>12}{'whole words':>13}")
    results = {}
    for name in ("bertkit-likelihood", "bertkit-ratio", "hf"):
        r = results[name] = evaluate(out / name, test)
        print(f"{name:<22}{r['vocab']:>7}{r['tokens_per_word']:>13.4f}{r['unks']:>8}{r['unk_per_word']:>12.2e}"
              f"{r['whole_words']:>13.4f}")
    ours, ref = results["bertkit-likelihood"], results["hf"]
    print(f"tokens/word ratio bertkit(likelihood) / HF: {ours['tokens_per_word'] / ref['tokens_per_word']:.4f}")
    shared = set((out / "bertkit-likelihood" / "vocab.txt").read_text(encoding="utf-8").split("\n")) & set(
        (out / "hf" / "vocab.txt").read_text(encoding="utf-8").split("\n"))
    print(f"tokens shared by the bertkit(likelihood) and HF vocabularies: {len(shared) - 1}")
    print(f"vocabularies in {out}")


if __name__ == "__main__":
    main()
