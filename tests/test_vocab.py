"""WordPiece vocabulary learning: the merge criterion, the file format, bad input, and
cased parity of our tokenizer with the Rust reference on a vocabulary we learned."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from bertkit.vocab import (
    CRITERIA,
    PREFIX,
    build_vocab,
    count_words,
    learn_wordpiece,
    likelihood_gain,
    special_tokens,
)
from conftest import data_path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# ----------------------------------------------------------------------------
# Real text helpers
# ----------------------------------------------------------------------------

def sst2_sentences(n: int) -> list[str]:
    lines = data_path("glue", "SST-2", "train.tsv").read_text(encoding="utf-8").splitlines()[1 : n + 1]
    return [line.split("\t")[0] for line in lines]


def conll_sentences(name: str, n: int) -> list[str]:
    sentences, words = [], []
    for line in data_path("conll2003", name).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("-DOCSTART-"):
            words.append(line.split(" ")[0])
        elif words:
            sentences.append(" ".join(words))
            words = []
    return sentences[:n]


def squad_contexts(articles: slice) -> list[str]:
    data = json.loads(data_path("squad_v1.1", "dev-v1.1.json").read_text(encoding="utf-8"))["data"]
    return [p["context"] for article in data[articles] for p in article["paragraphs"]]


def write_lines(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------
# The learner on word counts
# ----------------------------------------------------------------------------

def spell(word: str) -> list[str]:
    return [word[0]] + [PREFIX + c for c in word[1:]]


def merge(pieces: list[str], a: str, b: str) -> list[str]:
    out, i = [], 0
    while i < len(pieces):
        if pieces[i : i + 2] == [a, b]:
            out.append(a + b[len(PREFIX):])
            i += 2
        else:
            out.append(pieces[i])
            i += 1
    return out


def naive_wordpiece(word_counts: dict[str, int], vocab_size: int, criterion: str) -> list[str]:
    """The textbook algorithm: recount every pair and piece before each merge.

    Same score and tie-breaking as bertkit's learner (score, then pair count, then
    piece ids), but no incremental bookkeeping: the reference it must match.
    """
    score = CRITERIA[criterion]
    words = sorted(word_counts)
    chars = sorted({c for w in words for c in w})
    pieces = chars + [PREFIX + c for c in chars]
    ids = {p: i for i, p in enumerate(pieces)}
    spelled = [spell(w) for w in words]
    while len(pieces) < vocab_size - len(SPECIALS):
        piece_count, pair_count = Counter(), Counter()
        for syms, w in zip(spelled, words):
            for s in syms:
                piece_count[s] += word_counts[w]
            for p in zip(syms, syms[1:]):
                pair_count[p] += word_counts[w]
        total = sum(piece_count.values())
        candidates = [
            (-score(n, piece_count[a], piece_count[b], total, a == b), -n, ids[a], ids[b], a, b)
            for (a, b), n in pair_count.items() if n >= 2
        ]
        if not candidates:
            break
        *_, a, b = min(candidates)
        merged = a + b[len(PREFIX):]
        if merged not in ids:
            ids[merged] = len(pieces)
            pieces.append(merged)
        spelled = [merge(syms, a, b) for syms in spelled]
    return SPECIALS + pieces


# Most frequent pair: (##e, ##s), 40 times, so BPE merges "##es" first. But ##e and ##s
# are common everywhere (160 each), while q and ##z (25 each) only ever occur together.
CONTRAST = {**{x + "e": 30 for x in "bcdf"}, **{x + "s": 30 for x in "hjkl"},
            **{x + "es": 10 for x in "mnpr"}, "qz": 25}


def first_merge(counts: dict[str, int], criterion: str) -> str:
    alphabet = 2 * len(set("".join(counts)))
    return learn_wordpiece(counts, len(SPECIALS) + alphabet + 1, criterion=criterion)[-1]


def most_frequent_pair(counts: dict[str, int]) -> str:
    pair_freq = Counter()
    for w, n in counts.items():
        s = spell(w)
        for a, b in zip(s, s[1:]):
            pair_freq[a + b[len(PREFIX):]] += n
    return pair_freq.most_common(1)[0][0]


@pytest.mark.parametrize("criterion", ["likelihood", "ratio"])
def test_first_merge_is_by_likelihood_not_frequency(criterion):
    assert most_frequent_pair(CONTRAST) == "##es"  # what BPE merges first
    assert first_merge(CONTRAST, criterion) == "qz"


def test_ratio_criterion_on_the_hugging_face_course_example():
    # BPE merges (##u, ##g) (20 times); the ratio prefers (##g, ##s): 5 / (20 * 5) > 20 / (36 * 20).
    counts = {"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}
    assert most_frequent_pair(counts) == "##ug"
    assert first_merge(counts, "ratio") == "##gs"


def log_likelihood(spelled: dict[tuple[str, ...], int]) -> float:
    """Log-likelihood of a corpus (spelled word -> count) under its own unigram piece model."""
    counts = Counter()
    for pieces, n in spelled.items():
        for p in pieces:
            counts[p] += n
    total = sum(counts.values())
    return sum(c * math.log(c / total) for c in counts.values())


@pytest.mark.parametrize("pair", [("##e", "##s"), ("q", "##z"), ("b", "##e"), ("##a", "##a")])
def test_likelihood_gain_is_the_exact_log_likelihood_change(pair):
    counts = {**CONTRAST, "baa": 7}
    before = {tuple(spell(w)): n for w, n in counts.items()}
    after = {tuple(merge(list(s), *pair)): n for s, n in before.items()}
    a, b = pair
    piece_count, n = Counter(), 0
    for s, c in before.items():
        for p in s:
            piece_count[p] += c
        n += c * sum(1 for x, y in zip(s, s[1:]) if (x, y) == pair)
    gain = likelihood_gain(n, piece_count[a], piece_count[b], sum(piece_count.values()), a == b)
    assert gain == pytest.approx(log_likelihood(after) - log_likelihood(before), rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("criterion", ["likelihood", "ratio"])
def test_incremental_learner_matches_naive_recount(criterion):
    counts = Counter()
    for s in sst2_sentences(300):
        counts.update(s.split())
    size = 500
    ours = learn_wordpiece(counts, size, criterion=criterion)
    assert ours == naive_wordpiece(counts, size, criterion)
    assert len(ours) == size


def test_layout_size_and_determinism():
    counts = Counter()
    for s in sst2_sentences(2000):
        counts.update(s.split())
    vocab = learn_wordpiece(counts, 1500, special_tokens(num_unused=3))
    assert vocab[:8] == ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) == len(set(vocab)) == 1500
    # Insertion order of the counts must not matter.
    shuffled = list(counts.items())
    random.Random(0).shuffle(shuffled)
    assert learn_wordpiece(dict(shuffled), 1500, special_tokens(num_unused=3)) == vocab
    # Every piece is bare or "##"-prefixed, never "##" inside; all characters in both forms.
    chars = {c for w in counts for c in w}
    assert chars <= set(vocab) and {PREFIX + c for c in chars} <= set(vocab)
    for t in vocab[8:]:
        assert PREFIX not in t.removeprefix(PREFIX)
    learned = vocab[8 + 2 * len(chars):]
    assert any(t.startswith(PREFIX) for t in learned) and any(not t.startswith(PREFIX) for t in learned)
    # Frequent words become whole tokens.
    frequent = [w for w, _ in counts.most_common(50) if len(w) > 1]
    assert set(frequent) <= set(vocab)


def test_vocab_size_too_small_or_corpus_exhausted():
    with pytest.raises(ValueError, match="too small"):
        learn_wordpiece({"abcdef": 5}, 8)
    # Nothing left to merge: the vocabulary stops short instead of inventing pieces.
    vocab = learn_wordpiece({"ab": 5}, 100)
    assert vocab == SPECIALS + ["a", "b", "##a", "##b", "ab"]
    with pytest.raises(ValueError, match="no words"):
        learn_wordpiece({}, 100)


# ----------------------------------------------------------------------------
# Files in, a loadable tokenizer out
# ----------------------------------------------------------------------------

def test_build_vocab_loads_and_covers_its_corpus(tmp_path):
    from bertkit.tokenizer import Tokenizer, basic_tokenize

    texts = sst2_sentences(1500)
    corpus = write_lines(tmp_path / "sst2.txt", texts)
    vocab_file = build_vocab([corpus], tmp_path / "out", vocab_size=1200, workers=1, progress=False)
    tok = Tokenizer.from_pretrained(tmp_path / "out")
    assert tok.do_lower_case and len(tok) == 1200
    assert vocab_file.read_text(encoding="utf-8").splitlines()[:5] == SPECIALS
    ids = (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id)
    assert ids == (0, 1, 2, 3, 4)
    # Every character seen is in the vocabulary, so in-corpus text never becomes [UNK].
    ids = [i for t in texts for i in tok.encode(t).input_ids]
    assert tok.unk_token_id not in ids
    # Frequent words are single tokens.
    counts = Counter(w for t in texts for w in basic_tokenize(t))
    for w, _ in counts.most_common(50):
        assert tok.tokenize(w) == [w]


def test_jsonl_input_and_worker_pool_give_the_same_counts(tmp_path):
    texts = sst2_sentences(4000)
    plain = write_lines(tmp_path / "a.txt", texts)
    jsonl = write_lines(tmp_path / "a.jsonl", [json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)])
    other = write_lines(tmp_path / "b.json", [json.dumps({"sentence": t}) for t in texts])
    assert jsonl.stat().st_size > 128 * 1024  # big enough for the worker pool
    one = count_words([plain], workers=1, progress=False)
    assert count_words([jsonl], workers=2, progress=False) == one
    assert count_words([other], text_field="sentence", workers=1, progress=False) == one
    # A bad line deep in the file still stops the pool with its file and line.
    with open(jsonl, "a", encoding="utf-8") as f:
        f.write('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match=rf"a\.jsonl:{len(texts) + 2}: no string field 'text'"):
        count_words([jsonl], workers=2, progress=False)


def test_cased_vocab_keeps_case_and_accents(tmp_path):
    corpus = write_lines(tmp_path / "c.txt", ["Café au lait at the Café", "CAFÉ Résumé résumé"] * 3)
    lower = learn_wordpiece(count_words([corpus], progress=False), 60)
    cased = learn_wordpiece(count_words([corpus], do_lower_case=False, progress=False), 60)
    assert "É" not in "".join(lower) and "C" not in "".join(lower[5:])
    assert {"C", "##É", "R", "##é"} <= set(cased)


def test_bad_input_is_reported(tmp_path):
    from bertkit.cli import main

    with pytest.raises(FileNotFoundError, match="missing.txt"):
        build_vocab([tmp_path / "missing.txt"], tmp_path / "out", progress=False)
    empty = write_lines(tmp_path / "empty.txt", ["", "   "])
    with pytest.raises(ValueError, match="no words"):
        build_vocab([empty], tmp_path / "out", progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nalso fine\nbroken \xff\xfe here\n")
    with pytest.raises(ValueError, match=r"bad\.txt:3: not valid UTF-8"):
        build_vocab([bad], tmp_path / "out", progress=False)
    rows = write_lines(tmp_path / "rows.jsonl", ['{"text": "ok"}', '{"label": 1}'])
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: no string field 'text'"):
        build_vocab([rows], tmp_path / "out", progress=False)
    # The command turns them into one-line errors, exit status 2.
    assert main(["vocab", str(bad), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    assert not (tmp_path / "out").exists()


def test_cli_writes_a_tokenizer_directory(tmp_path):
    from bertkit.cli import main
    from bertkit.tokenizer import Tokenizer

    corpus = write_lines(tmp_path / "c.txt", conll_sentences("eng.train.txt", 1000))
    out = tmp_path / "vocab"
    assert main(["vocab", str(corpus), "--output", str(out), "--vocab-size", "900", "--cased",
                 "--unused", "2", "--no-progress"]) == 0
    tok = Tokenizer.from_pretrained(out)
    assert not tok.do_lower_case and len(tok) == 900
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["[PAD]", "[unused0]", "[unused1]", "[UNK]"]


# ----------------------------------------------------------------------------
# Cased parity: our tokenizer vs the Rust reference, on a vocabulary we learned
# ----------------------------------------------------------------------------

def test_cased_learned_vocab_tokenizes_like_the_reference(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from bertkit.tokenizer import Tokenizer

    # Learn from CoNLL train + a few SQuAD articles; test on CoNLL dev and other
    # SQuAD articles, so unseen words get split and unseen characters become [UNK].
    train = conll_sentences("eng.train.txt", 4000) + squad_contexts(slice(0, 4))
    corpus = write_lines(tmp_path / "train.txt", train)
    build_vocab([corpus], tmp_path / "cased", vocab_size=4000, do_lower_case=False, workers=1, progress=False)
    vocab_file = str(tmp_path / "cased" / "vocab.txt")

    ours = Tokenizer.from_pretrained(tmp_path / "cased")
    rust = tokenizers.BertWordPieceTokenizer(vocab_file, lowercase=False, strip_accents=False)
    # What Hugging Face's BertTokenizer does for a cased model (bert-base-cased's settings).
    hf = transformers.BertTokenizer(vocab_file, do_lower_case=False)
    texts = conll_sentences("eng.testa.txt", 1500) + squad_contexts(slice(20, 26))
    unk = 0
    for text in texts:
        enc, ref = ours.encode(text, truncation=False), rust.encode(text)
        assert enc.input_ids == ref.ids, text
        assert [tuple(o) for o in enc.offsets] == [tuple(o) for o in ref.offsets], text
        assert enc.input_ids == hf(text)["input_ids"], text
        unk += ref.ids.count(ours.unk_token_id)
    assert unk > 0  # the [UNK] path was exercised too
