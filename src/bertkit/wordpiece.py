"""BERT's WordPiece: text -> token ids, each with the character span it came from.

Text goes through three steps, as in Google's original tokenization.py and in
the Rust `tokenizers` library (the reference our tests compare against):

1. normalize: drop NUL, U+FFFD and control characters, turn whitespace into
   spaces, put spaces around CJK ideographs, and when uncased strip accents
   (NFD, then drop non-spacing marks) and lowercase;
2. pre-tokenize: split on whitespace, and make every punctuation character a
   word of its own;
3. WordPiece: split each word greedily into the longest vocabulary pieces,
   continuations prefixed with "##"; a word that cannot be covered, or is
   longer than 100 characters, becomes [UNK].

Special tokens written in the text ("[CLS]", "[MASK]", ...) are matched on the
raw text first, case-sensitively and anywhere (also inside a word), and stay
whole: the Rust reference treats them as added tokens that skip normalization.

Every token keeps the (start, end) character span it came from in the ORIGINAL
text, which question answering and token classification need.

Speed comes from one observation: the result for a space-separated chunk of
text ("movie.", "don't") depends on that chunk alone, because a space splits
words, starts a new NFD segment and is never removed. So `WordPiece.encode`
splits the text on spaces (a C-speed str.split) and remembers each chunk's
pieces and relative spans; real text repeats its chunks heavily. A chunk seen
for the first time goes through a regular-expression path when it is plain
ASCII, and through the exact character-by-character path otherwise; the tests
prove that both give the reference's output.

Adding [CLS]/[SEP], truncating and padding (model inputs) is `bertkit.tokenizer`'s job.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from dataclasses import dataclass
from itertools import accumulate, chain, compress, repeat
from operator import is_
from pathlib import Path

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
MAX_CHARS_PER_WORD = 100  # longer words become [UNK] (BERT's max_input_chars_per_word)

# --- character classes -------------------------------------------------------
# Unicode White_Space, as Rust's char::is_whitespace sees it. Python's
# str.isspace also accepts U+001C..U+001F, which BERT treats as controls.
_WHITESPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
# ASCII symbols count as punctuation although Unicode files "$", "+", "^"... as S*.
_ASCII_PUNCT = frozenset(chr(c) for c in [*range(33, 48), *range(58, 65), *range(91, 97), *range(123, 127)])


def _is_control(ch: str) -> bool:
    # Tab, newline and carriage return are Cc but count as whitespace. Unassigned
    # code points (Cn) are kept, as the Rust reference does (Google's BERT drops them).
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs")


def _is_punctuation(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch)[0] == "P"


def _is_cjk(cp: int) -> bool:
    """CJK Unified Ideographs (and extensions, compatibility blocks), as in BERT.

    Hangul, Hiragana and Katakana are not here: those scripts put spaces
    between words, so they are tokenized like any other letters.
    """
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B920 <= cp <= 0x2CEAF  # sic: the Rust reference has 2B920 where BERT has 2B820
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


# Plain ASCII with no control character: normalization is at most lowercasing
# (one character for one, so spans need no bookkeeping), every non-alphanumeric
# printable character is punctuation, and there are no CJK characters.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_WORD = re.compile(r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]")


@dataclass(frozen=True)
class BasicTokenizer:
    """Steps 1 and 2 (normalize, pre-tokenize), with spans into the input.

    The one place the casing settings live: WordPiece and Tokenizer read them from here.
    """

    do_lower_case: bool = True
    strip_accents: bool | None = None  # None: strip them when lowercasing, as BERT and the Rust reference do
    tokenize_chinese_chars: bool = True

    def normalize(self, text: str) -> tuple[list[str], list[int]]:
        """Normalized characters, and for each the index of the input character it came from."""
        strip = self.do_lower_case if self.strip_accents is None else self.strip_accents
        chars: list[str] = []
        origin: list[int] = []
        for i, ch in enumerate(text):
            if ch == "\x00" or ch == "\ufffd" or _is_control(ch):
                continue
            if ch in _WHITESPACE:
                chars.append(" ")
                origin.append(i)
                continue
            cjk = self.tokenize_chinese_chars and _is_cjk(ord(ch))
            if cjk:  # a word of its own
                chars.append(" ")
                origin.append(i)
            if strip:
                # One character at a time: NFD of the whole text could also
                # reorder combining marks, but all of them go except 25 rare
                # non-Mn ones (musical symbols...), none in a BERT vocabulary.
                out = "".join(c for c in unicodedata.normalize("NFD", ch) if unicodedata.category(c) != "Mn")
            else:
                out = ch
            if self.do_lower_case:
                # Per character, like the reference: no context-dependent final sigma.
                out = "".join(c.lower() for c in out)
            for c in out:
                chars.append(c)
                origin.append(i)
            if cjk:
                chars.append(" ")
                origin.append(i)
        return chars, origin

    def words(self, text: str) -> list[tuple[str, int | list[int]]]:
        """(word, origin) for each pre-token of `text`.

        origin is where the word starts in `text` when its characters come one
        each from consecutive characters of `text` (always so in ASCII), else the
        list of the positions in `text` each of its characters came from.
        """
        if text.isascii() and not _ASCII_CONTROL.search(text):
            if self.do_lower_case:
                text = text.lower()
            if " " not in text and text.isprintable():
                # No whitespace at all (a chunk, see WordPiece.encode): the
                # words tile the text, each starting where the previous one ended.
                words = _ASCII_WORD.findall(text)
                return list(zip(words, accumulate(map(len, words), initial=0)))
            return [(m.group(), m.start()) for m in _ASCII_WORD.finditer(text)]
        chars, origin = self.normalize(text)
        out: list[tuple[str, int | list[int]]] = []
        start = -1  # index into `chars` where the word being read starts; -1 between words

        def flush(stop: int) -> None:
            where = origin[start:stop]
            # Positions never decrease: distinct and spanning len(where) means consecutive.
            one_for_one = where[-1] - where[0] == stop - start - 1 and len(set(where)) == len(where)
            out.append(("".join(chars[start:stop]), where[0] if one_for_one else where))

        for j, ch in enumerate(chars):
            if ch == " " or _is_punctuation(ch):
                if start >= 0:
                    flush(j)
                    start = -1
                if ch != " ":
                    out.append((ch, origin[j]))
            elif start < 0:
                start = j
        if start >= 0:
            flush(len(chars))
        return out


_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def split_specials(text: str) -> list[tuple[str, int, bool]]:
    """(piece, start, is_special): the text cut around the special tokens written in it.

        split_specials("a [MASK] b") -> [("a ", 0, False), ("[MASK]", 2, True), (" b", 8, False)]
    """
    if "[" not in text:
        return [(text, 0, False)]
    pieces, pos = [], 0
    for m in _SPECIAL_RE.finditer(text):
        pieces.append((text[pos:m.start()], pos, False))
        pieces.append((m.group(), m.start(), True))
        pos = m.end()
    pieces.append((text[pos:], pos, False))
    return pieces


@functools.cache
def _basic(do_lower_case: bool) -> BasicTokenizer:
    return BasicTokenizer(do_lower_case)


def basic_tokenize(text: str, do_lower_case: bool = True) -> list[str]:
    """BERT's basic tokenization: normalized words and punctuation, special tokens kept whole.

        basic_tokenize("Don't [MASK] it!") -> ["don", "'", "t", "[MASK]", "it", "!"]
    """
    basic = _basic(bool(do_lower_case))
    out: list[str] = []
    for piece, _, special in split_specials(text):
        if special:
            out.append(piece)
        else:
            out.extend(w for w, _ in basic.words(piece))
    return out


# --- vocabulary files -----------------------------------------------------------

# Rust's str::trim_end, which the `tokenizers` reference applies to every line.
_TRAILING_SPACE = "".join(_WHITESPACE)


def load_vocab(path: str | os.PathLike) -> dict[str, int]:
    """vocab.txt -> {token: id}: one token per line, its id is its line number (from 0).

    Trailing whitespace (a Windows line end included) is not part of a token, as in the
    Rust reference. A blank line is the token "" (it never matches a word), as there too;
    a token on two lines, a second blank line included, is an error naming both lines:
    Hugging Face keeps the last id and leaves the first one without a token, which shifts
    what the model's embedding rows mean.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines):
        token = line.rstrip(_TRAILING_SPACE)
        first = vocab.setdefault(token, i)
        if first != i:
            what = f"token {token!r}" if token else "blank line (the token '')"
            raise ValueError(f"{path}: lines {first + 1} and {i + 1} hold the same {what}; "
                             "each line is one token id, so a vocabulary lists every token once")
    if not vocab:
        raise ValueError(f"{path}: vocabulary file is empty")
    return vocab


# --- WordPiece --------------------------------------------------------------------

# A cache this full is cleared rather than grown, so memory stays bounded: about
# 400 bytes a chunk, ~200 MB at most (all of IMDB, 65 MB of text, needs 400k chunks).
_CACHE_LIMIT = 500_000
_CACHE_MAX_CHUNK = 64  # longer chunks rarely repeat; caching them only costs memory

# A chunk's cache entry: (ids, steps, marks), see WordPiece._encode_chunk.
Chunk = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@functools.lru_cache(maxsize=256)
def _marks(n_tokens: int) -> tuple[int, ...]:
    """A chunk's marks (see WordPiece._encode_chunk), shared between chunks to save memory."""
    return (1,) * (2 * n_tokens) + (0,)


class WordPiece:
    """Steps 1-3 with the chunk cache: text -> (token ids, flat spans), no [CLS]/[SEP].

        wp = WordPiece(vocab)
        wp.encode("Héllo, world")  -> ([7592, 1010, 2088], [0, 5, 5, 6, 7, 12])
    """

    def __init__(self, vocab: dict[str, int], basic: BasicTokenizer | None = None):
        if UNK not in vocab:
            raise ValueError(f"vocabulary lacks {UNK}")
        self.vocab = vocab
        self.basic = basic if basic is not None else BasicTokenizer()
        self.unk_token_id = vocab[UNK]
        # No vocabulary piece is longer than this: WordPiece never tries longer substrings.
        self._max_piece = max(len(t) for t in vocab)
        self._word_cache: dict[str, tuple[tuple[int, int, int], ...]] = {}
        self._chunk_cache: dict[str, Chunk] = {}

    def __getstate__(self) -> dict:
        # Caches only save time: a copy sent to another process starts without them.
        return {**self.__dict__, "_word_cache": {}, "_chunk_cache": {}}

    def encode(self, text: str, with_offsets: bool = True) -> tuple[list[int], list[int] | None]:
        """Ids of `text`, and with_offsets its flat spans [start0, end0, start1, end1, ...] into it."""
        ids: list[int] = []
        spans: list[int] | None = [] if with_offsets else None
        for piece, pos, special in split_specials(text):
            if special:
                ids.append(self.vocab[piece])
                if spans is not None:
                    spans += (pos, pos + len(piece))
            else:
                self._encode_piece(piece, pos, ids, spans)
        return ids, spans

    def _encode_piece(self, piece: str, base: int, ids: list[int], spans: list[int] | None) -> None:
        """Append ids and spans of `piece` (no special tokens in it), which starts at `base` in its text.

        The hot path: every loop below runs in C (map, chain, accumulate), one
        dictionary lookup per space-separated chunk; no Python code runs per
        chunk or token once the chunks have been seen.
        """
        if self.basic.do_lower_case and piece.isascii():
            piece = piece.lower()  # one-for-one in ASCII; chunks then repeat more often
        chunks = piece.split(" ")
        hits = list(map(self._chunk_cache.get, chunks))
        if None in hits:  # first-seen chunks (or long ones, never cached)
            fresh = {c: self._remember(c) for c in compress(chunks, map(is_, hits, repeat(None)))}
            hits = list(map(fresh.get, chunks, hits))  # dict.get(chunk, default=cached hit)
        chunk_ids, steps, marks = zip(*hits)  # str.split gives at least one chunk
        ids += chain.from_iterable(chunk_ids)
        if spans is not None:
            walk = accumulate(chain.from_iterable(steps), initial=base)
            spans += compress(walk, chain((0,), chain.from_iterable(marks)))  # start, end, start, end, ...

    def _remember(self, chunk: str) -> Chunk:
        """Encode a chunk seen for the first time, and cache it unless it is long (long ones rarely repeat)."""
        if chunk.isascii() and chunk.isprintable():  # most chunks: the fast path
            hit = self._encode_ascii_chunk(chunk)
        else:
            hit = self._encode_chunk(chunk)
        if len(chunk) <= _CACHE_MAX_CHUNK:
            if len(self._chunk_cache) >= _CACHE_LIMIT:
                self._chunk_cache.clear()  # bounded memory; refills from the traffic that follows
            self._chunk_cache[chunk] = hit
        return hit

    def _encode_chunk(self, chunk: str) -> Chunk:
        """A chunk's cache entry: (ids, steps, marks).

        Spans are stored as steps of a walk through the text: from the chunk's
        start to each token's start, then to its end, ..., and finally past
        the chunk and its space to the next chunk's start. Summing steps over
        consecutive chunks (itertools.accumulate) gives every position in one
        C-level pass; `marks` is 1 for the sums that are token starts or ends.
        """
        ids, steps = [], []
        at = 0
        for word, origin in self.basic.words(chunk):
            for i, s, e in self._wordpiece(word):
                start, end = (origin + s, origin + e) if isinstance(origin, int) else (origin[s], origin[e - 1] + 1)
                ids.append(i)
                steps += (start - at, end - start)
                at = end
        steps.append(len(chunk) + 1 - at)
        return tuple(ids), tuple(steps), _marks(len(ids))

    def _encode_ascii_chunk(self, chunk: str) -> Chunk:
        """_encode_chunk for printable ASCII without spaces.

        The fast path for first-seen chunks, which dominate a cold start: such a
        chunk needs no normalization, its words (letters and digits, or one
        punctuation character) tile it one character for one, and most words
        are whole vocabulary entries, which greedy WordPiece would find first.
        """
        words = _ASCII_WORD.findall(chunk.lower() if self.basic.do_lower_case else chunk)
        ids = list(map(self.vocab.get, words))
        if None not in ids and self._max_piece <= MAX_CHARS_PER_WORD:
            # Every word is a vocabulary entry, one token spanning the word; the
            # words tile the chunk, so each token starts where the previous ended.
            steps = [0] * (2 * len(ids) + 1)
            steps[1::2] = map(len, words)
            steps[-1] = 1
            return tuple(ids), tuple(steps), _marks(len(ids))
        found, ids, steps = ids, [], []
        at = pos = 0  # end of the last token; start of the current word
        for word, i in zip(words, found):
            n = len(word)
            if i is not None and n <= MAX_CHARS_PER_WORD:
                ids.append(i)
                steps += (pos - at, n)
                at = pos + n
            else:
                for i, s, e in self._wordpiece(word):
                    ids.append(i)
                    steps += (pos + s - at, e - s)
                    at = pos + e
            pos += n
        steps.append(pos + 1 - at)
        return tuple(ids), tuple(steps), _marks(len(ids))

    def _wordpiece(self, word: str) -> tuple[tuple[int, int, int], ...]:
        """(id, start, end) per piece of a normalized word: greedy longest match first."""
        pieces = self._word_cache.get(word)
        if pieces is None:
            pieces = self._greedy_pieces(word)
            if len(self._word_cache) >= _CACHE_LIMIT:
                self._word_cache.clear()
            self._word_cache[word] = pieces
        return pieces

    def _greedy_pieces(self, word: str) -> tuple[tuple[int, int, int], ...]:
        vocab, n = self.vocab, len(word)
        unknown = ((self.unk_token_id, 0, n),)
        if n > MAX_CHARS_PER_WORD:
            return unknown
        found = []
        start = 0
        while start < n:
            for end in range(min(n, start + self._max_piece), start, -1):
                i = vocab.get(word[start:end] if start == 0 else "##" + word[start:end])
                if i is not None:
                    found.append((i, start, end))
                    break
            else:  # no piece fits here: the whole word is unknown
                return unknown
            start = end
        return tuple(found)
