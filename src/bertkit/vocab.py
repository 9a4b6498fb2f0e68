"""Learn a WordPiece vocabulary from text.

Algorithm: likelihood-based WordPiece merges, as Schuster & Nakajima (2012)
describe WordPiece: greedily add the new piece that raises the likelihood of the
training data the most. Google never released its learner, and the `tokenizers`
"WordPiece" trainer actually learns BPE merges (most frequent pair first).

1. Count words with BERT's own basic tokenization (`basic_tokenize`), so the
   learner sees exactly the words the tokenizer will later split.
2. Spell every word as characters: the first one bare, the rest "##"-prefixed
   ("play" -> p ##l ##a ##y). The alphabet (every character, in both forms)
   enters the vocabulary, so text made of seen characters never maps to [UNK].
3. Repeatedly merge the adjacent pair (a, b) with the highest score:
   - "likelihood" (default): the exact gain in log-likelihood of the corpus
     under a unigram model of pieces, p(x) = count(x) / total, when every
     (a, b) becomes ab. Roughly count(ab) * log(count(ab) * total / (count(a) *
     count(b))): how much more often a and b meet than chance, times how often.
   - "ratio": count(ab) / (count(a) * count(b)), the form popularised by the
     Hugging Face course. Without the count(ab) weight it favours pairs of rare
     pieces; on IMDB a 30k vocabulary then lacks "the" (see bench/vocab.py).
   BPE instead takes the most *frequent* pair, e.g. "##e ##s", however
   common ##e and ##s are on their own.
4. Stop when the vocabulary reaches the requested size.

Efficiency: the corpus is a word -> frequency table, each word a list of piece
ids. Merging (a, b) only rewrites the words that contain it (an inverted index
pair -> words), so only their pair counts change. Scores also depend on count(a),
count(b) and the total, which every merge moves, so the max-heap holds upper
bounds of scores (see `learn_wordpiece`) and a popped top is checked exactly;
stale entries are dropped when popped (lazy deletion). A merge costs time in
proportion to what it changes, never a recount of all pairs.
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from math import log
from pathlib import Path

from tqdm.auto import tqdm

from bertkit.io import chunked, read_texts
from bertkit.tokenizer import Tokenizer
from bertkit.wordpiece import CLS, MASK, MAX_CHARS_PER_WORD, PAD, SEP, UNK, basic_tokenize

PREFIX = "##"  # marks a piece that continues a word
# Below this much input a worker pool costs more than it saves.
_MIN_BYTES_FOR_POOL = 128 * 1024
_CHUNK_TEXTS = 500


# ----------------------------------------------------------------------------
# Reading and counting words
# ----------------------------------------------------------------------------

def _count_chunk(args: tuple[list[str], bool]) -> tuple[int, Counter[str]]:
    texts, do_lower_case = args
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(basic_tokenize(text, do_lower_case=do_lower_case))
    return len(texts), counts




def count_words(
    paths: Iterable[str | os.PathLike],
    do_lower_case: bool = True,
    text_field: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Counter[str]:
    """Word frequencies of the texts in `paths`, split by BERT's basic tokenization.

    Texts stream from disk in chunks to `workers` processes (default: all
    cores); the order of files and lines does not change the result.
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
    texts = (t for p in paths for t in read_texts(p, keep_blank=False, text_field=text_field))
    jobs = ((chunk, do_lower_case) for chunk in chunked(texts, _CHUNK_TEXTS))
    workers = workers or os.cpu_count() or 1
    counts: Counter[str] = Counter()
    with tqdm(unit="text", desc="counting words", disable=not progress) as bar:
        if workers > 1 and sum(p.stat().st_size for p in paths) >= _MIN_BYTES_FOR_POOL:
            # spawn, not fork: a fork of a process whose other threads hold a lock (an allocator's, a
            # library's) can deadlock in the child; the workers need only this module.
            with mp.get_context("spawn").Pool(workers) as pool:
                for n, part in pool.imap_unordered(_count_chunk, jobs):
                    counts.update(part)
                    bar.update(n)
        else:
            for n, part in map(_count_chunk, jobs):
                counts.update(part)
                bar.update(n)
    return counts


# ----------------------------------------------------------------------------
# The learner
# ----------------------------------------------------------------------------

def special_tokens(num_unused: int = 0) -> list[str]:
    """[PAD], then `num_unused` [unusedN] slots (room for later additions), then the rest.

    The order of bert-base's vocab.txt ([PAD] at 0, [UNK] [CLS] [SEP] [MASK] after
    its [unusedN] block) and of the `tokenizers` trainer's defaults.
    """
    return [PAD] + [f"[unused{i}]" for i in range(num_unused)] + [UNK, CLS, SEP, MASK]


def ratio_score(n: int, count_a: int, count_b: int, total: int, same: bool) -> float:
    """count(ab) / (count(a) * count(b)): the pair's likelihood ratio, ignoring its frequency."""
    return n / (count_a * count_b)


def likelihood_gain(n: int, count_a: int, count_b: int, total: int, same: bool) -> float:
    """Exact change of the corpus log-likelihood under a unigram piece model
    (p(x) = count(x) / total) when the n occurrences of (a, b) become one new piece.

    With L = sum_x count(x) log count(x) - total log total, the merge moves n counts
    from a and b to ab and removes n from the total. Roughly n * log(count(ab) * total
    / (count(a) * count(b))): the ratio above weighted by how often the pair occurs.
    """
    # x log x, written out (0 log 0 = 0): this runs millions of times.
    a, b, t = count_a - n, count_b - n, total - n
    gain = n * log(n) - count_a * log(count_a) - (t * log(t) - total * log(total))
    if same:  # (a, a): both halves come out of count(a)
        a -= n
        return gain + (a * log(a) if a > 0 else 0.0)
    return gain + (a * log(a) if a else 0.0) + (b * log(b) if b else 0.0) - count_b * log(count_b)


CRITERIA = {"likelihood": likelihood_gain, "ratio": ratio_score}


def learn_wordpiece(
    word_counts: Mapping[str, int],
    vocab_size: int,
    specials: Iterable[str] = special_tokens(),
    min_frequency: int = 2,
    criterion: str = "likelihood",
    progress: bool = False,
) -> list[str]:
    """Learn a WordPiece vocabulary (list of tokens, id = position) from word counts.

    Layout: `specials`, then the alphabet (bare characters, then "##" ones, each
    sorted), then pieces in the order they were learned. `criterion` picks the
    merge score (see CRITERIA). Pairs seen fewer than `min_frequency` times are
    never merged. Ties break towards the more frequent pair, then the earlier
    pieces, so the result is deterministic. The vocabulary is shorter than
    `vocab_size` only if no pair is left to merge.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}: choose from {', '.join(CRITERIA)}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be at least 1, not {min_frequency}")
    score = CRITERIA[criterion]
    specials = list(specials)
    taken = set(specials)
    # Longer words are [UNK] whole at encoding time; special tokens are in already.
    words = sorted(w for w, c in word_counts.items()
                   if c > 0 and 0 < len(w) <= MAX_CHARS_PER_WORD and w not in taken)
    if not words:
        raise ValueError("the corpus has no words to learn from")
    chars = sorted({ch for w in words for ch in w})
    pieces = chars + [PREFIX + ch for ch in chars]
    if len(specials) + len(pieces) > vocab_size:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for {len(specials)} special tokens "
            f"and {len(chars)} characters (x2 with '##') of the corpus"
        )
    piece_id = {p: i for i, p in enumerate(pieces)}

    # The corpus: each word type as a list of piece ids, with its frequency.
    freqs = [word_counts[w] for w in words]
    spelled = [[piece_id[w[0]]] + [piece_id[PREFIX + ch] for ch in w[1:]] for w in words]
    piece_count = [0] * len(pieces)
    pair_count: dict[tuple[int, int], int] = Counter()
    where: dict[tuple[int, int], set[int]] = {}  # pair -> indices of words containing it
    partners: dict[int, set[tuple[int, int]]] = {}  # piece -> live pairs it is part of
    for w, (syms, f) in enumerate(zip(spelled, freqs)):
        for s in syms:
            piece_count[s] += f
        for pair in zip(syms, syms[1:]):
            pair_count[pair] += f
            where.setdefault(pair, set()).add(w)
    for pair in pair_count:
        partners.setdefault(pair[0], set()).add(pair)
        partners.setdefault(pair[1], set()).add(pair)
    total = sum(piece_count)  # pieces in the corpus: shrinks with every merge

    # Both scores fall as total shrinks and rise as count(a) or count(b) shrinks.
    # The heap holds, per pair, a key that is an upper bound of its score: the
    # score computed with floor[x] <= count(x), half the count x had when its
    # partners were last scored, in place of each piece's count. So when a merge
    # lowers count(a), a's partners (thousands, for a common piece) keep valid
    # bounds and need no rescoring until count(a) has halved. The price: a popped
    # top is checked with true counts, and goes back in if it loses.
    floor = [(c + 1) // 2 for c in piece_count]
    exact_of: dict[int, set[tuple[int, int]]] = {}  # piece -> pairs whose key used its true count

    def key(pair: tuple[int, int], counts: list[int]) -> tuple[float, int, int, int]:
        a, b = pair
        n = pair_count[pair]
        count_a, count_b = max(counts[a], n), max(counts[b], n)  # a pair's pieces occur >= n times
        return (-score(n, count_a, count_b, total, a == b), -n, a, b)

    def push(pair: tuple[int, int], counts: list[int]) -> None:
        if pair_count[pair] >= min_frequency:
            latest[pair] = k = key(pair, counts)
            heapq.heappush(heap, k)
        else:
            latest.pop(pair, None)

    # Max-heap of keys (-score, -count, a, b), with lazy deletion: `latest` holds
    # each pair's newest key, so older copies are dropped when popped.
    latest = {p: key(p, floor) for p, n in pair_count.items() if n >= min_frequency}
    heap = list(latest.values())
    heapq.heapify(heap)

    target = vocab_size - len(specials)
    bar = tqdm(total=target, initial=len(pieces), unit="piece", desc="learning WordPiece", disable=not progress)
    while len(pieces) < target and heap:
        top = heapq.heappop(heap)
        pair = (top[2], top[3])
        if latest.get(pair) != top:
            continue  # superseded, or the pair was merged away
        exact = key(pair, piece_count)
        if heap and exact > heap[0]:
            # Not the best once scored exactly: back in with the exact key, which
            # stays an upper bound until count(a) or count(b) changes.
            latest[pair] = exact
            heapq.heappush(heap, exact)
            exact_of.setdefault(pair[0], set()).add(pair)
            exact_of.setdefault(pair[1], set()).add(pair)
            continue
        a, b = pair
        merged = pieces[a] + pieces[b][len(PREFIX):]
        # Two different pairs can spell the same piece ("ab"+"##c", "a"+"##bc").
        new = piece_id.get(merged)
        fresh = new is None
        if fresh:
            new = piece_id[merged] = len(pieces)
            pieces.append(merged)
            piece_count.append(0)
            floor.append(0)
            bar.update(1)

        delta: Counter[tuple[int, int]] = Counter()
        for w in list(where[pair]):
            syms, f = spelled[w], freqs[w]
            out: list[int] = []
            i = 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            k = (len(syms) - len(out)) * f  # occurrences merged
            piece_count[a] -= k
            piece_count[b] -= k
            piece_count[new] += k
            total -= k
            old_pairs, new_pairs = list(zip(syms, syms[1:])), list(zip(out, out[1:]))
            for p in old_pairs:
                delta[p] -= f
            for p in new_pairs:
                delta[p] += f
            for p in set(old_pairs) - set(new_pairs):
                where[p].discard(w)
            for p in set(new_pairs) - set(old_pairs):
                where.setdefault(p, set()).add(w)
            spelled[w] = out

        for p, d in delta.items():
            if d == 0:
                continue
            n = pair_count[p] = pair_count.get(p, 0) + d
            if n == 0:
                del pair_count[p], where[p]
                latest.pop(p, None)
                partners[p[0]].discard(p)
                partners[p[1]].discard(p)
            else:
                partners.setdefault(p[0], set()).add(p)
                partners.setdefault(p[1], set()).add(p)

        # Rescore the pairs whose bound may now be too low: those whose own count
        # changed, those scored with the true count of a or b, and all partners of
        # a piece that fell below its floor. (`new` only gained: bounds still hold.)
        rescore = {p for p, d in delta.items() if d and p in pair_count}
        if fresh:
            floor[new] = (piece_count[new] + 1) // 2
        for x in (a, b):
            rescore |= exact_of.pop(x, set())
            if piece_count[x] < floor[x]:
                floor[x] = (piece_count[x] + 1) // 2
                rescore |= partners.get(x, set())
        for p in rescore:
            if p in pair_count:
                push(p, floor)
    bar.close()
    return specials + pieces


# ----------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------

def build_vocab(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    vocab_size: int = 30522,
    do_lower_case: bool = True,
    text_field: str | None = None,
    num_unused: int = 0,
    min_frequency: int = 2,
    criterion: str = "likelihood",
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Learn a vocabulary from text files and write vocab.txt + tokenizer_config.json to `out_dir`.

    The directory then loads with `bertkit.tokenizer.Tokenizer.from_pretrained(out_dir)`.
    With `progress`, shows progress bars and a summary line on stderr.
    Returns the path of vocab.txt.
    """
    paths = list(paths)
    if not paths:
        raise ValueError("no input files given")
    counts = count_words(paths, do_lower_case, text_field, workers, progress)
    if not counts:
        raise ValueError(f"no words found in {', '.join(map(str, paths))}")
    vocab = learn_wordpiece(counts, vocab_size, special_tokens(num_unused), min_frequency, criterion, progress)
    Tokenizer({t: i for i, t in enumerate(vocab)}, do_lower_case=do_lower_case).save_pretrained(out_dir)
    if progress:
        too_long = sum(c for w, c in counts.items() if len(w) > MAX_CHARS_PER_WORD)
        print(f"{len(vocab)} tokens learned from {sum(counts.values())} words ({len(counts)} distinct; "
              f"{too_long} over {MAX_CHARS_PER_WORD} characters, which encode as {UNK}, not learned from) "
              f"-> {Path(out_dir) / 'vocab.txt'}", file=sys.stderr)
    return Path(out_dir) / "vocab.txt"


