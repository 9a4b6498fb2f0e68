"""BERT's WordPiece tokenizer, compatible with Hugging Face's down to the offsets.

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
words, starts a new NFD segment and is never removed. So `encode` splits the
text on spaces (a C-speed str.split) and remembers each chunk's pieces and
relative spans; real text repeats its chunks heavily. A chunk seen for the
first time goes through a regular-expression path when it is plain ASCII, and
through the exact character-by-character path otherwise; the tests prove that
both give the reference's output.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, compress, repeat
from operator import is_
from pathlib import Path

from bertkit.hub import resolve

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


def _is_whitespace(ch: str) -> bool:
    return ch in _WHITESPACE


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


class BasicTokenizer:
    """Steps 1 and 2 (normalize, pre-tokenize), with spans into the input."""

    def __init__(self, do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True):
        self.do_lower_case = do_lower_case
        # None means "follow lowercasing", as in BERT and the Rust reference.
        self.strip_accents = do_lower_case if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars

    def normalize(self, text: str) -> tuple[list[str], list[int]]:
        """Normalized characters, and for each the index of the input character it came from."""
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
            if self.strip_accents:
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
                # No whitespace at all (a chunk, see Tokenizer._encode_piece): the
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
_BASIC = {True: BasicTokenizer(True), False: BasicTokenizer(False)}


def _split_specials(text: str) -> list[tuple[str, int, bool]]:
    """(piece, start, is_special): the text cut around special tokens written in it."""
    if "[" not in text:
        return [(text, 0, False)]
    pieces, pos = [], 0
    for m in _SPECIAL_RE.finditer(text):
        pieces.append((text[pos:m.start()], pos, False))
        pieces.append((m.group(), m.start(), True))
        pos = m.end()
    pieces.append((text[pos:], pos, False))
    return pieces


def basic_tokenize(text: str, do_lower_case: bool = True) -> list[str]:
    """BERT's basic tokenization: normalized words and punctuation, special tokens kept whole."""
    basic = _BASIC[bool(do_lower_case)]
    out: list[str] = []
    for piece, _, special in _split_specials(text):
        if special:
            out.append(piece)
        else:
            out.extend(w for w, _ in basic.words(piece))
    return out


# --- encodings -----------------------------------------------------------------

@dataclass
class Encoding:
    """One model input: token ids plus what each position is."""

    input_ids: list[int]
    token_type_ids: list[int]
    attention_mask: list[int]
    # Every token's character span, flat: [start0, end0, start1, end1, ...] (see `offsets`).
    # None when not requested.
    spans: list[int] | None
    # 0 or 1: which input sequence a token comes from; None for specials and padding.
    sequence_ids: list[int | None]
    # Further windows of a truncated input (see `Tokenizer.encode`, `stride`).
    overflowing: list[Encoding] = field(default_factory=list)
    _offsets: list[tuple[int, int]] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def offsets(self) -> list[tuple[int, int]] | None:
        """(start, end) character span of each token in the original text of its sequence;
        (0, 0) for special tokens and padding. None when not requested.

        Built from `spans` on first use, as the Rust tokenizer builds its Python lists on
        access: a batch keeps two ints a token instead of a tuple each, and code that only
        needs ids never pays for the tuples (or for the garbage collector scanning them).
        """
        if self._offsets is None and self.spans is not None:
            it = iter(self.spans)
            self._offsets = list(zip(it, it))
        return self._offsets


@dataclass
class _Pieces:
    """Token ids and spans of one sequence, before special tokens are added."""

    ids: list[int]
    spans: list[int] | None  # flat, two a token: see Encoding.spans
    overflowing: list[_Pieces] = field(default_factory=list)

    def truncate(self, max_len: int, stride: int) -> None:
        """Keep the first `max_len` tokens; later windows of `max_len` overlapping by `stride` overflow.

        Windows start every max_len - stride tokens until one reaches the end,
        as in the Rust reference (Encoding::truncate).
        """
        n = len(self.ids)
        if max_len >= n:
            return
        if max_len == 0:
            self.overflowing = [_Pieces(self.ids, self.spans)]
            self.ids, self.spans = [], ([] if self.spans is not None else None)
            return
        if stride >= max_len:
            raise ValueError(f"stride ({stride}) must be smaller than the room left for this sequence ({max_len})")
        windows = []
        for start in range(0, n, max_len - stride):
            stop = min(start + max_len, n)
            spans = self.spans[2 * start:2 * stop] if self.spans is not None else None
            windows.append(_Pieces(self.ids[start:stop], spans))
            if stop == n:
                break
        self.ids, self.spans = windows[0].ids, windows[0].spans
        self.overflowing = windows[1:]


def _truncate(a: _Pieces, b: _Pieces | None, max_len: int, strategy: str, stride: int) -> None:
    """Fit a (and b) into max_len tokens, specials excluded; mirrors tokenizers' truncate_encodings."""
    total = len(a.ids) + (len(b.ids) if b is not None else 0)
    if max_len == 0:
        a.truncate(0, stride)
        if b is not None:
            b.truncate(0, stride)
        return
    if total <= max_len:
        return
    to_remove = total - max_len
    if strategy == "longest_first" and b is not None:
        # The shorter sequence keeps its length when the longer one alone can
        # make room; otherwise both get half (the longer one the odd token).
        n1, n2 = len(a.ids), len(b.ids)
        swap = n1 > n2
        if swap:
            n1, n2 = n2, n1
        n2 = n1 if n1 > max_len else max(n1, max_len - n1)
        if n1 + n2 > max_len:
            n1 = max_len // 2
            n2 = n1 + max_len % 2
        if swap:
            n1, n2 = n2, n1
        a.truncate(n1, stride)
        b.truncate(n2, stride)
        return
    if strategy == "only_second":
        if b is None:
            raise ValueError("truncation='only_second' needs a text pair")
        target = b
    else:  # only_first, or longest_first with a single sequence
        target = a
    if len(target.ids) <= to_remove:
        raise ValueError(
            f"cannot truncate with {strategy!r} to max_length: the sequence to truncate has "
            f"{len(target.ids)} tokens but {to_remove} must go"
        )
    target.truncate(len(target.ids) - to_remove, stride)


# --- the tokenizer -------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _marks(n_tokens: int) -> tuple[int, ...]:
    """A chunk's marks (see Tokenizer._encode_chunk), shared between chunks to save memory."""
    return (1,) * (2 * n_tokens) + (0,)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch is encoded.

    A batch allocates lists and cache entries that stay alive; each allocation
    burst triggers a collection that rescans everything allocated so far: 12-15%
    of a cold encode_batch of 10,000 IMDB reviews (30-40% when every offset was
    still a tuple). The tokenizer creates no reference cycles, so nothing is left
    for the collector to free.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_TRUNCATION = {True: "longest_first", "longest_first": "longest_first", "only_first": "only_first",
               "only_second": "only_second"}
# A cache this full is cleared rather than grown, so memory stays bounded: about
# 400 bytes a chunk, ~200 MB at most (all of IMDB, 65 MB of text, needs 400k chunks).
_CACHE_LIMIT = 500_000
_CACHE_MAX_CHUNK = 64  # longer chunks rarely repeat; caching them only costs memory


class Tokenizer:
    """BERT WordPiece tokenizer: text -> ids with spans, and back."""

    def __init__(self, vocab: dict[str, int], do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, model_max_length: int = 512):
        if not vocab:
            raise ValueError("vocabulary is empty")
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {', '.join(missing)}")
        self.vocab = vocab
        self.ids_to_tokens = {i: t for t, i in vocab.items()}
        self.basic = BasicTokenizer(do_lower_case, strip_accents, tokenize_chinese_chars)
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents  # as configured (None = follow do_lower_case)
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = model_max_length
        self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id = (
            vocab[t] for t in SPECIAL_TOKENS)
        self.special_ids = frozenset(vocab[t] for t in SPECIAL_TOKENS)
        # No vocabulary piece is longer than this: WordPiece never tries longer substrings.
        self._max_piece = max(len(t) for t in vocab)
        self._word_cache: dict[str, tuple[tuple[int, int, int], ...]] = {}
        # chunk -> (ids, steps, marks): see _encode_chunk
        self._chunk_cache: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    # -- loading and saving --

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> Tokenizer:
        """Load from a directory with vocab.txt (and tokenizer_config.json), or from a vocab.txt path.

        A name that is no path (e.g. "sentence-transformers/all-MiniLM-L6-v2") is
        resolved like a model name: an installed model package or the offline
        Hugging Face cache. Keyword overrides (do_lower_case=...) win over
        tokenizer_config.json.
        """
        path = Path(path)
        if not path.exists():
            path = resolve(path)
        vocab_file = path / "vocab.txt" if path.is_dir() else path
        if not vocab_file.is_file():
            raise FileNotFoundError(f"no vocabulary file at {vocab_file}")
        settings = {}
        config_file = vocab_file.parent / "tokenizer_config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{config_file}: not valid JSON ({e})") from None
            for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "model_max_length"):
                if config.get(key) is not None:
                    settings[key] = config[key]
            # Hugging Face writes a huge sentinel when a model has no limit.
            if settings.get("model_max_length", 0) > 1_000_000:
                del settings["model_max_length"]
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(load_vocab(vocab_file), **settings)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write vocab.txt and tokenizer_config.json, the layout Hugging Face reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tokens = sorted(self.vocab, key=self.vocab.__getitem__)
        (directory / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "model_max_length": self.model_max_length,
            "unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def __len__(self) -> int:
        return len(self.vocab)

    # -- text to pieces --

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

    def _encode_chunk(self, chunk: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
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

    def _encode_ascii_chunk(self, chunk: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """_encode_chunk for printable ASCII without spaces.

        The fast path for first-seen chunks, which dominate a cold start: such a
        chunk needs no normalization, its words (letters and digits, or one
        punctuation character) tile it one character for one, and most words
        are whole vocabulary entries, which greedy WordPiece would find first.
        """
        words = _ASCII_WORD.findall(chunk.lower() if self.do_lower_case else chunk)
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

    def _encode_text(self, text: str, with_offsets: bool = True) -> tuple[list[int], list[int] | None]:
        """Ids (and flat spans into `text`) of one sequence, no [CLS]/[SEP] added."""
        ids: list[int] = []
        spans: list[int] | None = [] if with_offsets else None
        for piece, pos, special in _split_specials(text):
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

    def _remember(self, chunk: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
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

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of `text`, without [CLS]/[SEP]."""
        return self.convert_ids_to_tokens(self._encode_text(text, with_offsets=False)[0])

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self.vocab.get(tokens, self.unk_token_id)
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        """Tokens of ids (ints, or anything int() takes: numpy or torch scalars)."""
        try:
            if not hasattr(ids, "__iter__"):
                return self.ids_to_tokens[int(ids)]
            return [self.ids_to_tokens[int(i)] for i in ids]
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is not in the vocabulary ({len(self.vocab)} tokens)") from None

    # -- model inputs --

    def encode(self, text: str, text_pair: str | None = None, max_length: int | None = None,
               truncation: bool | str = True, padding: bool | str = False, return_offsets: bool = True,
               stride: int = 0, return_overflowing: bool = False) -> Encoding:
        """[CLS] text [SEP] (text_pair [SEP]) as model inputs.

        truncation: True / "longest_first" (trim the longer sequence first),
        "only_first", "only_second", or False. It applies to max_length, which
        defaults to model_max_length. With return_overflowing, the tokens cut
        off come back as further windows in `.overflowing`, each overlapping the
        previous one by `stride` tokens (for question answering: only_second
        keeps the question whole and slides over the context).
        padding: False, "max_length" (pad to max_length), or "longest"/True
        (a no-op for one text; see encode_batch).
        Offsets index into `text` for sequence 0 and into `text_pair` for sequence 1.
        """
        return self._encode(text, text_pair, max_length, truncation, return_offsets, stride, return_overflowing,
                            pad_to=self._pad_length(padding, max_length))

    __call__ = encode

    def encode_batch(self, texts: Sequence[str | tuple[str, str]], max_length: int | None = None,
                     truncation: bool | str = True, padding: bool | str = False, return_offsets: bool = True,
                     stride: int = 0, return_overflowing: bool = False) -> list[Encoding]:
        """encode() for each text or (text, pair); padding="longest" pads all to the longest of the batch."""
        pad_to = self._pad_length(padding, max_length)
        with _gc_paused():
            encodings = [
                self._encode(t, None, max_length, truncation, return_offsets, stride, return_overflowing, pad_to)
                if isinstance(t, str) else
                self._encode(t[0], t[1], max_length, truncation, return_offsets, stride, return_overflowing, pad_to)
                for t in texts
            ]
        if padding is True or padding == "longest":
            everything = [e for enc in encodings for e in (enc, *enc.overflowing)]
            longest = max((len(e) for e in everything), default=0)
            for e in everything:
                self._pad(e, longest)
        return encodings

    def _pad_length(self, padding: bool | str, max_length: int | None) -> int | None:
        if padding in (False, None, True, "longest", "do_not_pad"):
            return None
        if padding == "max_length":
            return max_length if max_length is not None else self.model_max_length
        raise ValueError(f"padding must be False, True, 'longest' or 'max_length', not {padding!r}")

    def _encode(self, text: str, pair: str | None, max_length: int | None, truncation: bool | str,
                return_offsets: bool, stride: int, return_overflowing: bool, pad_to: int | None) -> Encoding:
        if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
            raise TypeError("encode takes str texts")
        a = _Pieces(*self._encode_text(text, return_offsets))
        b = _Pieces(*self._encode_text(pair, return_offsets)) if pair is not None else None
        n_special = 2 if b is None else 3
        if truncation not in (False, None, "do_not_truncate"):
            strategy = _TRUNCATION.get(truncation)
            if strategy is None:
                raise ValueError(f"truncation must be True, False, 'longest_first', 'only_first' or 'only_second', "
                                 f"not {truncation!r}")
            limit = max_length if max_length is not None else self.model_max_length
            if limit < n_special:
                raise ValueError(f"max_length={limit} leaves no room beside the {n_special} special tokens")
            _truncate(a, b, limit - n_special, strategy, stride)
        enc = self._with_specials(a, b)
        # Overflowing windows pair up as in tokenizers' Encoding::merge_with:
        # each window of a with b and b's windows, then a with b's windows.
        if return_overflowing:
            b_windows = b.overflowing if b is not None else []
            for wa in a.overflowing:
                enc.overflowing.append(self._with_specials(wa, b))
                enc.overflowing.extend(self._with_specials(wa, wb) for wb in b_windows)
            enc.overflowing.extend(self._with_specials(a, wb) for wb in b_windows)
        if pad_to is not None:
            for e in (enc, *enc.overflowing):
                self._pad(e, pad_to)
        return enc

    def _with_specials(self, a: _Pieces, b: _Pieces | None) -> Encoding:
        n, cls, sep = len(a.ids), self.cls_token_id, self.sep_token_id
        ids = [cls, *a.ids, sep]
        sequence_ids: list[int | None] = [None, *[0] * n, None]
        spans = [0, 0, *a.spans, 0, 0] if a.spans is not None else None
        n_b = 0
        if b is not None:
            n_b = len(b.ids)
            ids += b.ids
            ids.append(sep)
            sequence_ids += [1] * n_b
            sequence_ids.append(None)
            if spans is not None:
                spans += b.spans
                spans += (0, 0)
        type_ids = [0] * (n + 2) + [1] * (n_b + 1 if b is not None else 0)
        return Encoding(ids, type_ids, [1] * len(ids), spans, sequence_ids)

    def _pad(self, enc: Encoding, length: int) -> None:
        missing = length - len(enc.input_ids)
        if missing > 0:
            enc.input_ids += [self.pad_token_id] * missing
            enc.token_type_ids += [0] * missing
            enc.attention_mask += [0] * missing
            enc.sequence_ids += [None] * missing
            if enc.spans is not None:
                enc.spans += [0, 0] * missing
                enc._offsets = None

    # -- ids to text --

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text from ids: pieces joined, "##" continuations glued, spaces before punctuation removed."""
        tokens = self.convert_ids_to_tokens(ids)
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in SPECIAL_TOKENS]
        text = " ".join(tokens).replace(" ##", "").strip()
        # Hugging Face's clean_up_tokenization: undo the spaces tokenization put before punctuation.
        for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                              (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
            text = text.replace(before, after)
        return text


def load_vocab(path: str | os.PathLike) -> dict[str, int]:
    """vocab.txt: one token per line, its id is the line number."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    vocab = {}
    for i, line in enumerate(lines):
        vocab[line.rstrip("\r")] = i  # a repeated token keeps its last id, as in Hugging Face's load_vocab
    if not vocab:
        raise ValueError(f"{path}: vocabulary file is empty")
    return vocab


# --- files -----------------------------------------------------------------------

def tokenize_file(vocab: str | os.PathLike, input: str | os.PathLike = "-", output: str | os.PathLike = "-",
                  max_length: int | None = None, do_lower_case: bool | None = None) -> int:
    """Tokenize a text file to JSON lines; returns the number of lines written.

    Each input line is a text, or two texts separated by one tab (a pair).
    Each output line holds tokens, input_ids, token_type_ids and offsets
    (character spans into the line's own text). Without max_length, nothing is
    truncated. A line that is not valid UTF-8 stops the run with an error that
    names the file, line and byte: silently replacing bytes would hide corrupt data.
    """
    from tqdm import tqdm

    tok = Tokenizer.from_pretrained(vocab, do_lower_case=do_lower_case)
    name = "<stdin>" if str(input) == "-" else str(input)
    src = sys.stdin.buffer if str(input) == "-" else open(input, "rb")
    dst = sys.stdout if str(output) == "-" else open(output, "w", encoding="utf-8")
    total = os.path.getsize(input) if str(input) != "-" else None
    written = 0
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc="tokenize", disable=total is None,
                  file=sys.stderr) as bar:
            for line_no, raw in enumerate(src, 1):
                bar.update(len(raw))
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{name}, line {line_no}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                                     f"byte {e.start} of the line)") from None
                fields = line.rstrip("\n").removesuffix("\r").split("\t")
                if len(fields) > 2:
                    raise ValueError(f"{name}, line {line_no}: {len(fields)} tab-separated fields; "
                                     "expected a text or a text pair")
                enc = tok.encode(fields[0], fields[1] if len(fields) == 2 else None, max_length=max_length,
                                 truncation=max_length is not None)
                record = {"tokens": tok.convert_ids_to_tokens(enc.input_ids), "input_ids": enc.input_ids,
                          "token_type_ids": enc.token_type_ids, "offsets": enc.offsets}
                dst.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
    finally:
        if src is not sys.stdin.buffer:
            src.close()
        if dst is not sys.stdout:
            dst.close()
        else:
            dst.flush()
    return written
