"""BERT's tokenizer: text -> model inputs, compatible with Hugging Face's down to the offsets.

`bertkit.wordpiece` turns a text into token ids with character spans; this module builds
model inputs from them: [CLS] text [SEP] (pair [SEP]), truncation with overflowing
windows, padding, and batches, in this process or in worker processes for large ones.

    tok = Tokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    tok.encode("Hello!").input_ids                   # [101, 7592, 999, 102]: bertkit's Encoding
    batch = tok(["a", "b c"], padding=True, return_tensors="pt")  # as transformers: model(**batch)

A large batch is cut into contiguous runs of texts ("jobs"), shared by this process and
worker processes that each keep their own warm WordPiece cache between calls. A
worker sends its encodings back as packed 32-bit ids and spans, and an Encoding builds its
Python lists only when read, so taking the results costs this process next to nothing.
The output is the same whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import re
import signal
import sys
import threading
import time
import weakref
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertkit.hub import resolve
from bertkit.io import atomic_write, read_lines, write_json, write_text
from bertkit.wordpiece import (
    CLS,
    MASK,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    UNK,
    BasicTokenizer,
    WordPiece,
    basic_tokenize,
    load_vocab,
)

if TYPE_CHECKING:  # imported when a batch first needs worker processes
    from concurrent.futures import Future, ProcessPoolExecutor

__all__ = ["Tokenizer", "Encoding", "BatchEncoding", "tokenize_file", "basic_tokenize", "load_vocab",
           "SPECIAL_TOKENS"]

# --- one sequence's pieces, and truncation ----------------------------------------------


@dataclass(slots=True)
class _Pieces:
    """Token ids and spans of one sequence, before special tokens are added.

    Lists, or views of the arrays a worker process sent back.
    """

    ids: Sequence[int]
    spans: Sequence[int] | None  # flat, two a token: [start0, end0, start1, end1, ...]
    overflowing: Sequence[_Pieces] = ()  # set by truncate

    def __reduce__(self) -> tuple:
        # A view of a worker's arrays cannot be pickled: a copy goes as lists.
        spans = list(self.spans) if self.spans is not None else None
        return _Pieces, (list(self.ids), spans, self.overflowing)

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


# --- encodings ---------------------------------------------------------------------------

_FIELDS = ("input_ids", "token_type_ids", "attention_mask", "spans", "sequence_ids", "offsets")


class _built_on_access:
    """A field computed by the decorated method on first access, then a plain attribute.

    functools.cached_property takes a lock on every first access (Python 3.11), which
    a batch of short texts pays once per field and text.
    """

    def __init__(self, build: Callable[[Any], Any]):
        self.build, self.name, self.__doc__ = build, build.__name__, build.__doc__

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.build(obj)
        return value


class Encoding:
    """One model input, [CLS] a [SEP] (b [SEP]) [PAD]..., and what each position is.

        enc = tok.encode("Héllo!", "Hi")
        enc.input_ids       # [101, 7592, 999, 102, 7632, 102]
        enc.token_type_ids  # [0, 0, 0, 0, 1, 1]
        enc.attention_mask  # [1, 1, 1, 1, 1, 1]
        enc.offsets         # [(0, 0), (0, 5), (5, 6), (0, 0), (0, 2), (0, 0)]: spans in each text
        enc.sequence_ids    # [None, 0, 0, None, 1, None]
        enc.overflowing     # further windows of a truncated input (Tokenizer.encode, stride)

    It holds the pieces of a (and b) as the tokenizer, or a worker process, produced
    them; each list is built on first access, as the Rust tokenizer builds its Python
    lists on access: code that reads only input_ids pays only for input_ids, and a
    batch from worker processes costs nothing until it is read.
    """

    def __init__(self, a: _Pieces, b: _Pieces | None, specials: tuple[int, int, int], length: int | None = None):
        self._a, self._b = a, b
        self._specials = specials  # ids of [CLS], [SEP], [PAD]
        self._n_a = len(a.ids)
        self._n_b = len(b.ids) if b is not None else -1  # -1: no pair
        self._real = self._n_a + 2 + (self._n_b + 1 if b is not None else 0)  # tokens before padding
        self.length = max(self._real, length or 0)
        self.overflowing: list[Encoding] = []

    def __len__(self) -> int:
        return self.length

    def pad(self, length: int) -> None:
        """Pad to `length` positions (nothing to do if already that long)."""
        if length > self.length:
            self.length = length
            for name in _FIELDS:  # lists already built are rebuilt on the next access
                self.__dict__.pop(name, None)

    @_built_on_access
    def input_ids(self) -> list[int]:
        cls, sep, pad = self._specials
        ids = [cls, *self._a.ids, sep]
        if self._b is not None:
            ids += self._b.ids
            ids.append(sep)
        if self.length > self._real:
            ids += [pad] * (self.length - self._real)
        return ids

    @_built_on_access
    def token_type_ids(self) -> list[int]:
        types = [0] * (self._n_a + 2)
        if self._b is not None:
            types += [1] * (self._n_b + 1)
        if self.length > self._real:
            types += [0] * (self.length - self._real)
        return types

    @_built_on_access
    def attention_mask(self) -> list[int]:
        return [1] * self._real + [0] * (self.length - self._real)

    @_built_on_access
    def sequence_ids(self) -> list[int | None]:
        """0 or 1: which text each token comes from; None for special tokens and padding."""
        seq: list[int | None] = [None, *[0] * self._n_a, None]
        if self._b is not None:
            seq += [1] * self._n_b
            seq.append(None)
        if self.length > self._real:
            seq += [None] * (self.length - self._real)
        return seq

    @_built_on_access
    def spans(self) -> list[int] | None:
        """Every token's character span, flat: [start0, end0, start1, end1, ...]; None when not asked for."""
        return list(self._walk_spans()) if self._a.spans is not None else None

    @_built_on_access
    def offsets(self) -> list[tuple[int, int]] | None:
        """(start, end) character span of each token in its own text; (0, 0) for specials and padding."""
        if self._a.spans is None:
            return None
        it = self._walk_spans()
        return list(zip(it, it))

    def _walk_spans(self) -> Iterator[int]:
        zeros = (0, 0)
        second = (self._b.spans, zeros) if self._b is not None else ()
        return chain(zeros, self._a.spans, zeros, *second, repeat(0, 2 * (self.length - self._real)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Encoding):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _FIELDS) and self.overflowing == other.overflowing

    def __repr__(self) -> str:
        more = f", overflowing={len(self.overflowing)} windows" if self.overflowing else ""
        return f"Encoding(input_ids={self.input_ids}, token_type_ids={self.token_type_ids}{more})"


class BatchEncoding(dict):
    """What Tokenizer.__call__ returns: model inputs by name, for model(**batch).

    input_ids, token_type_ids, attention_mask (+ offset_mapping, overflow_to_sample_mapping
    when asked for): lists for one text, lists of lists for a batch, or [batch, seq] tensors
    or arrays with return_tensors. Also read as attributes (batch.input_ids); `.encodings`
    holds each row's Encoding.
    """

    def __init__(self, data: dict[str, Any], encodings: list[Encoding]):
        super().__init__(data)
        self.encodings = encodings

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no {name!r} (has {', '.join(self)})") from None

    def to(self, device: Any) -> BatchEncoding:
        """The tensors moved to `device` (return_tensors="pt")."""
        return BatchEncoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()}, self.encodings)


# --- options ---------------------------------------------------------------------------------

_TRUNCATION = {True: "longest_first", "longest_first": "longest_first", "only_first": "only_first",
               "only_second": "only_second"}
_NO_TRUNCATION = (False, None, "do_not_truncate")
_PADDING = (False, None, "do_not_pad", True, "longest", "max_length")


@dataclass(frozen=True)
class _Options:
    """The keyword options of one encode/encode_batch call, checked (and sent to worker processes)."""

    limit: int | None  # tokens per encoding, specials included; None: no truncation
    strategy: str  # which sequence truncation cuts: longest_first, only_first, only_second
    stride: int
    with_offsets: bool
    overflowing: bool
    pad_to: int | None  # padding="max_length"
    pad_longest: bool  # padding=True / "longest": to the longest of the batch


@functools.lru_cache(maxsize=256)  # checking costs more than encoding a short text: once per set of options
def _checked_options(model_max_length: int, max_length: int | None, truncation: bool | str, padding: bool | str,
                     return_offsets: bool, stride: int, return_overflowing: bool) -> _Options:
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive whole number, not {max_length!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
        raise ValueError(f"stride must be a whole number >= 0, not {stride!r}")
    if padding not in _PADDING:
        raise ValueError(f"padding must be False, True, 'longest' or 'max_length', not {padding!r}")
    if truncation not in _NO_TRUNCATION and truncation not in _TRUNCATION:
        raise ValueError(f"truncation must be True, False, 'longest_first', 'only_first' or 'only_second', "
                         f"not {truncation!r}")
    limit = max_length if max_length is not None else model_max_length
    return _Options(limit=None if truncation in _NO_TRUNCATION else limit,
                    strategy=_TRUNCATION.get(truncation, "longest_first"), stride=stride,
                    with_offsets=bool(return_offsets), overflowing=bool(return_overflowing),
                    pad_to=limit if padding == "max_length" else None,
                    pad_longest=padding is True or padding == "longest")


# --- worker processes -----------------------------------------------------------------

# Below this many characters a batch stays in this process: a pool costs more than it saves.
_POOL_MIN_CHARS = 1_000_000
# Characters of text per job sent to a worker: contiguous runs of texts, small enough that
# the workers finish together, large enough that sending a job costs next to nothing.
_CHUNK_CHARS = 256_000
_LINES_PER_JOB = 1000  # tokenize_file

_worker: Tokenizer | None = None  # the tokenizer of a worker process, set once by _init_worker


def _init_worker(wordpiece: WordPiece, model_max_length: int) -> None:
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no tracebacks from here
    _worker = Tokenizer(wordpiece.vocab, model_max_length=model_max_length)
    _worker.wordpiece = wordpiece  # its settings, and (forked) the parent's warm cache
    # A parent killed outright cannot stop its workers: they notice and leave by themselves. The parent
    # is the tokenizer's process or, under forkserver, the fork server, which leaves when that process does.
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _in_worker(fn: Callable[[Tokenizer, Any], Any], job: Any) -> Any:
    return fn(_worker, job)


def _start_method() -> str | None:
    """fork when this process runs no other thread, else forkserver.

    A forked worker starts at once and shares this process's warm cache, but it inherits every
    lock as it was: one that another thread held (logging's, a stream's, an import's) stays held
    in the child forever, and the worker hangs. A forkserver's workers start clean; like spawn's,
    they need the main script's work under `if __name__ == "__main__":`.
    """
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _encode_flat(tok: Tokenizer, job: tuple[list, _Options]) -> tuple[array, array, array | None]:
    """A worker's encode_batch job: texts -> their windows, flattened (see _flatten)."""
    texts, options = job
    return _flatten(tok._windows_of(texts, options), options.with_offsets)


def _flatten(windows_of_texts: list[list[tuple[_Pieces, _Pieces | None]]],
             with_offsets: bool) -> tuple[array, array, array | None]:
    """(shape, ids, spans) as arrays of 32-bit ints: cheap to send to another process.

    shape holds, per text, its number of windows, then per window the token counts of its
    first and second sequence (-1 when there is none); ids and spans follow in that order.
    """
    shape, ids = array("i"), array("i")
    spans = array("i") if with_offsets else None
    for windows in windows_of_texts:
        shape.append(len(windows))
        for a, b in windows:
            for p in (a, b):
                if p is None:
                    shape.append(-1)
                    continue
                shape.append(len(p.ids))
                ids.fromlist(p.ids)  # a C loop; converting each int is the whole cost of sending
                if spans is not None:
                    spans.fromlist(p.spans)
    return shape, ids, spans


def _contiguous(items: list, sizes: list[int], target: int) -> Iterator[list]:
    """`items` cut into consecutive runs of about `target` total size."""
    start = total = 0
    for i, size in enumerate(sizes):
        total += size
        if total >= target:
            yield items[start:i + 1]
            start, total = i + 1, 0
    if start < len(items):
        yield items[start:]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch is encoded.

    A batch allocates lists and cache entries that stay alive; each allocation burst
    triggers a collection that rescans everything allocated so far, a large share of a
    cold batch. The tokenizer creates no reference cycles, so nothing is left for the
    collector to free.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --- the tokenizer ------------------------------------------------------------------------

class Tokenizer:
    """BERT WordPiece tokenizer: text -> model inputs with character spans, and ids -> text.

    Large batches go to worker processes, kept for later calls until close() (or exit):
    `with Tokenizer.from_pretrained(name) as tok: ...` closes them on leaving.
    """

    def __init__(self, vocab: dict[str, int], *, do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, model_max_length: int = 512):
        if not vocab:
            raise ValueError("vocabulary is empty")
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {', '.join(missing)}")
        self.wordpiece = WordPiece(vocab, BasicTokenizer(do_lower_case, strip_accents, tokenize_chinese_chars))
        self.vocab = vocab
        self.ids_to_tokens = {i: t for t, i in vocab.items()}
        self.model_max_length = model_max_length
        self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id = (
            vocab[t] for t in SPECIAL_TOKENS)
        self.special_ids = frozenset(vocab[t] for t in SPECIAL_TOKENS)
        self._specials = (self.cls_token_id, self.sep_token_id, self.pad_token_id)
        self._pool: ProcessPoolExecutor | None = None
        self._pool_size = 0
        self._pool_closer: weakref.finalize | None = None

    # The casing settings live in one place, the WordPiece's BasicTokenizer.
    @property
    def do_lower_case(self) -> bool:
        return self.wordpiece.basic.do_lower_case

    @property
    def strip_accents(self) -> bool | None:
        return self.wordpiece.basic.strip_accents

    @property
    def tokenize_chinese_chars(self) -> bool:
        return self.wordpiece.basic.tokenize_chinese_chars

    # -- loading and saving --

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> Tokenizer:
        """Load from a directory with vocab.txt (and tokenizer_config.json), or from a vocab.txt path.

        A name that is no path (e.g. "sentence-transformers/all-MiniLM-L6-v2") is
        resolved like a model name: an installed model package or the offline
        Hugging Face cache; a run folder gives its best/ (else last/) model. Keyword
        overrides (do_lower_case=...) win over tokenizer_config.json.
        """
        path = Path(path)
        if not path.exists():
            path = resolve(path)  # a model name; its error says where it looked
        elif path.is_dir() and not (path / "vocab.txt").is_file():
            with contextlib.suppress(FileNotFoundError):  # a run folder: its best/ or last/ (else the error below)
                path = resolve(path)
        vocab_file = path / "vocab.txt" if path.is_dir() else path
        if not vocab_file.is_file():
            raise FileNotFoundError(f"no vocabulary file at {vocab_file}")
        settings: dict[str, Any] = {}
        config_file = vocab_file.parent / "tokenizer_config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{config_file}: not valid JSON ({e})") from None
            kinds = {"do_lower_case": bool, "strip_accents": bool, "tokenize_chinese_chars": bool,
                     "model_max_length": int}
            for key, kind in kinds.items():
                value = config.get(key)
                if value is None:
                    continue
                if type(value) is not kind and not (kind is int and type(value) is float and value.is_integer()):
                    raise ValueError(f"{config_file}: {key} must be {kind.__name__}, not {value!r}")
                settings[key] = kind(value)
            # Hugging Face writes a huge sentinel when a model has no limit.
            if settings.get("model_max_length", 0) > 1_000_000:
                del settings["model_max_length"]
        elif (vocab_file.parent / "bert_config.json").is_file():  # Google's TensorFlow release folder
            lower = tf_do_lower_case(vocab_file.parent)
            if lower is not None:
                settings["do_lower_case"] = lower
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(load_vocab(vocab_file), **settings)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write vocab.txt and tokenizer_config.json, the layout Hugging Face reads."""
        directory = Path(directory)
        tokens = sorted(self.vocab, key=self.vocab.__getitem__)
        write_text(directory / "vocab.txt", "".join(t + "\n" for t in tokens))
        write_json(directory / "tokenizer_config.json", {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "model_max_length": self.model_max_length,
            "unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK,
        })

    def __len__(self) -> int:
        return len(self.vocab)

    def __getstate__(self) -> dict:
        # A copy sent to another process does not share this one's worker processes.
        return {**self.__dict__, "_pool": None, "_pool_size": 0, "_pool_closer": None}

    # -- tokens --

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of `text`, without [CLS]/[SEP]."""
        return self.convert_ids_to_tokens(self.wordpiece.encode(text, with_offsets=False)[0])

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

    def encode(self, text: str, text_pair: str | None = None, *, max_length: int | None = None,
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
        options = self._options(max_length, truncation, padding, return_offsets, stride, return_overflowing)
        return self._encoding(self._windows(text, text_pair, options), options)

    def encode_batch(self, texts: Sequence[str | tuple[str, str]], *, max_length: int | None = None,
                     truncation: bool | str = True, padding: bool | str = False, return_offsets: bool = True,
                     stride: int = 0, return_overflowing: bool = False, workers: int | None = None) -> list[Encoding]:
        """encode() for each text or (text, pair); padding="longest" pads all to the longest of the batch.

        workers: processes for a large batch (None: every core this process may use; 1: this
        process only). The output is the same for any number; small batches stay here. In a
        process running other threads the workers start from a forkserver, which (like spawn)
        wants a script's own work under `if __name__ == "__main__":`.
        """
        options = self._options(max_length, truncation, padding, return_offsets, stride, return_overflowing)
        sizes = [_size_of(i, t) for i, t in enumerate(texts)]
        workers = self._workers_for(workers, sum(sizes))
        with _gc_paused():
            # At least 32 jobs a process: the last jobs leave a process idle while another finishes.
            target = min(_CHUNK_CHARS, sum(sizes) // (32 * workers) + 1)
            chunks = _contiguous(list(texts), sizes, target) if workers > 1 else [texts]
            encodings = list(chain.from_iterable(self._map(
                ((chunk, options) for chunk in chunks), workers, remote=_encode_flat,
                local=lambda job: [self._encoding(w, options) for w in self._windows_of(*job)],
                arrive=lambda flat: self._from_flat(flat, options))))
        if options.pad_longest:
            everything = [e for enc in encodings for e in (enc, *enc.overflowing)]
            longest = max((len(e) for e in everything), default=0)
            for e in everything:
                e.pad(longest)
        return encodings

    def __call__(self, text: str | Sequence[str] | Sequence[tuple[str, str]],
                 text_pair: str | Sequence[str] | None = None, *, padding: bool | str = False,
                 truncation: bool | str | None = None, max_length: int | None = None, stride: int = 0,
                 return_tensors: str | None = None, return_offsets_mapping: bool = False,
                 return_overflowing_tokens: bool = False, workers: int | None = None) -> BatchEncoding:
        """Model inputs as transformers' tokenizers give them, ready for model(**batch).

            tok("Hello!")  -> {"input_ids": [101, 7592, 999, 102], "token_type_ids": [0, 0, 0, 0],
                               "attention_mask": [1, 1, 1, 1]}
            tok(["a", "b c"], padding=True, return_tensors="pt")["input_ids"]  -> tensor [2, 4]

        A list (or list of pairs) gives one row per text; one text gives plain lists, or
        tensors of one row. truncation=None (the default) truncates only when max_length is
        given, as transformers does; padding=True pads to the longest row, "max_length" to
        max_length. return_tensors: None (lists), "pt" (torch) or "np" (numpy), int64.
        return_overflowing_tokens adds a row per further window and overflow_to_sample_mapping.
        """
        batched = not isinstance(text, str)
        if batched:
            if text_pair is None:
                items = list(text)
            else:
                if isinstance(text_pair, str) or len(text_pair) != len(text):
                    raise ValueError(f"text_pair must be a list as long as text ({len(text)} texts)")
                items = list(zip(text, text_pair))
        else:
            if text_pair is not None and not isinstance(text_pair, str):
                raise TypeError(f"text_pair of one text must be a str, not {type(text_pair).__name__}")
            items = [text if text_pair is None else (text, text_pair)]
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', not {return_tensors!r}")
        if truncation is None:
            truncation = max_length is not None
        encodings = self.encode_batch(items, max_length=max_length, truncation=truncation, padding=padding,
                                      return_offsets=return_offsets_mapping, stride=stride,
                                      return_overflowing=return_overflowing_tokens, workers=workers)
        rows = [e for enc in encodings for e in (enc, *enc.overflowing)] if return_overflowing_tokens else encodings
        data: dict[str, Any] = {"input_ids": [r.input_ids for r in rows],
                                "token_type_ids": [r.token_type_ids for r in rows],
                                "attention_mask": [r.attention_mask for r in rows]}
        if return_offsets_mapping:
            data["offset_mapping"] = [r.offsets for r in rows]
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = [i for i, enc in enumerate(encodings)
                                                  for _ in range(1 + len(enc.overflowing))]
        if return_tensors is not None:
            data = {k: _tensor(k, v, return_tensors) for k, v in data.items()}
        elif not batched and not return_overflowing_tokens:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, rows)

    def _options(self, max_length: int | None, truncation: bool | str, padding: bool | str, return_offsets: bool,
                 stride: int, return_overflowing: bool) -> _Options:
        args = (self.model_max_length, max_length, truncation, padding, return_offsets, stride, return_overflowing)
        try:
            return _checked_options(*args)
        except TypeError:  # an unhashable argument: checked without the cache, for a clear error
            return _checked_options.__wrapped__(*args)

    def _windows(self, text: str, pair: str | None, options: _Options) -> list[tuple[_Pieces, _Pieces | None]]:
        """The (a, b) pieces of each window of one input: the first, then the overflowing ones."""
        if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
            raise TypeError(f"encode takes str texts, not {type(text if not isinstance(text, str) else pair).__name__}")
        a = _Pieces(*self.wordpiece.encode(text, options.with_offsets))
        b = _Pieces(*self.wordpiece.encode(pair, options.with_offsets)) if pair is not None else None
        if options.limit is not None:
            n_special = 2 if b is None else 3
            if options.limit < n_special:
                raise ValueError(f"max_length={options.limit} leaves no room beside the {n_special} special tokens")
            _truncate(a, b, options.limit - n_special, options.strategy, options.stride)
        windows = [(a, b)]
        # Overflowing windows pair up as in tokenizers' Encoding::merge_with:
        # each window of a with b and b's windows, then a with b's windows.
        if options.overflowing:
            b_windows = b.overflowing if b is not None else []
            for wa in a.overflowing:
                windows.append((wa, b))
                windows += [(wa, wb) for wb in b_windows]
            windows += [(a, wb) for wb in b_windows]
        return windows

    def _windows_of(self, texts: Sequence[str | tuple[str, str]], options: _Options) -> list[list[tuple]]:
        return [self._windows(t, None, options) if isinstance(t, str) else self._windows(t[0], t[1], options)
                for t in texts]

    def _encoding(self, windows: list[tuple[_Pieces, _Pieces | None]], options: _Options) -> Encoding:
        first, *rest = (Encoding(a, b, self._specials, options.pad_to) for a, b in windows)
        first.overflowing = rest
        return first

    def _from_flat(self, flat: tuple[array, array, array | None], options: _Options) -> list[Encoding]:
        """The encodings a worker sent as arrays (see _flatten); their pieces are views of the arrays."""
        shape, ids, spans = (memoryview(a) if a is not None else None for a in flat)
        encodings, at = [], 0
        sizes = iter(shape)
        for n_windows in sizes:
            windows = []
            for _ in range(n_windows):
                pair = []
                for n in (next(sizes), next(sizes)):
                    if n < 0:
                        pair.append(None)
                        continue
                    pair.append(_Pieces(ids[at:at + n], spans[2 * at:2 * (at + n)] if spans is not None else None))
                    at += n
                windows.append(tuple(pair))
            encodings.append(self._encoding(windows, options))
        return encodings

    # -- worker processes --

    def _workers_for(self, workers: int | None, size: int) -> int:
        """How many processes encode a batch of `size` characters."""
        if workers is None:
            workers = _cpu_count()
        elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a whole number >= 1, not {workers!r}")
        return workers if size >= _POOL_MIN_CHARS else 1

    def _map(self, jobs: Iterable[Any], workers: int, remote: Callable[[Tokenizer, Any], Any],
             local: Callable[[Any], Any], arrive: Callable[[Any], Any] = lambda result: result) -> Iterator[Any]:
        """The result of each job, in the order of `jobs`, computed by `workers` processes, this one included.

        This process runs local(job); a worker process runs remote(its tokenizer, job), whose result
        becomes arrive(result) here. Workers get jobs while they have fewer than two waiting; this
        process takes the rest, so the work spreads by speed, and what this process does needs no
        sending. At most a few jobs per process are in flight: `jobs` may stream from a file.
        """
        if workers == 1:
            yield from map(local, jobs)
            return
        from concurrent.futures.process import BrokenProcessPool

        pool = self._pool_of(workers - 1)
        pending: deque[tuple[Future | None, Any]] = deque()  # (a worker's job, or None and the result here)
        try:
            for job in jobs:
                if sum(f is not None and not f.done() for f, _ in pending) < 2 * (workers - 1):
                    pending.append((pool.submit(_in_worker, remote, job), None))
                else:
                    pending.append((None, local(job)))
                while pending and (pending[0][0] is None or pending[0][0].done() or len(pending) > 4 * workers):
                    future, result = pending.popleft()
                    yield result if future is None else arrive(future.result())
            while pending:
                future, result = pending.popleft()
                yield result if future is None else arrive(future.result())
        except (BrokenProcessPool, KeyboardInterrupt):
            self.close()  # a worker died, or Ctrl-C: the next call starts afresh
            raise
        finally:
            for future, _ in pending:
                if future is not None:
                    future.cancel()

    def _pool_of(self, size: int) -> ProcessPoolExecutor:
        """The worker processes, started on first use and kept (with their warm caches) until close()."""
        if self._pool is None or self._pool_size != size:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self.close()
            self._pool = ProcessPoolExecutor(size, mp_context=mp.get_context(_start_method()),
                                             initializer=_init_worker,
                                             initargs=(self.wordpiece, self.model_max_length))
            self._pool_size = size
            self._pool_closer = weakref.finalize(self, self._pool.shutdown, wait=True, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes, if any; a later large batch starts new ones."""
        if self._pool_closer is not None:
            self._pool_closer()  # shuts the pool down, once
        self._pool, self._pool_size, self._pool_closer = None, 0, None

    def __enter__(self) -> Tokenizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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


def tf_do_lower_case(folder: str | os.PathLike) -> bool | None:
    """Whether a Google release's tokenizer lowercases (its folder has no tokenizer_config.json):
    from the folder's name (uncased_L-12_..., cased_L-12_..., multi_cased_...,
    scibert_scivocab_uncased), else cased if vocab.txt holds uppercase tokens (a lowercasing
    tokenizer could never produce them); None if nothing tells."""
    folder = Path(folder).resolve()
    name = folder.name.lower()
    if re.search(r"(^|[^a-z])uncased", name):
        return True
    if re.search(r"(^|[^a-z])cased", name):
        return False
    vocab = folder / "vocab.txt"
    if vocab.is_file():
        with open(vocab, encoding="utf-8", errors="replace") as f:
            for line in f:
                token = line.strip()
                if not (token.startswith("[") and token.endswith("]")) and token != token.lower():
                    return False
    return None


def _size_of(i: int, item: str | tuple[str, str]) -> int:
    """Characters in a batch item, which must be a text or a (text, pair); checked here to name its index."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], str):
        return len(item[0]) + len(item[1])
    raise TypeError(f"texts[{i}] is a {type(item).__name__}, not a str or a (text, pair) of str")


def _tensor(name: str, rows: list, kind: str) -> Any:
    """One BatchEncoding field as an int64 array (kind "np") or tensor ("pt"): [rows, seq] (offsets: [rows, seq, 2])."""
    import numpy as np

    if name == "overflow_to_sample_mapping":
        values = np.asarray(rows, dtype=np.int64)
    else:
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise ValueError(f"return_tensors needs rows of one length, these have {min(lengths)} to "
                             f"{max(lengths)} tokens: pass padding=True (or padding='max_length')")
        seq = lengths.pop() if lengths else 0
        flat = chain.from_iterable(chain.from_iterable(rows) if name == "offset_mapping" else rows)
        shape = (len(rows), seq, 2) if name == "offset_mapping" else (len(rows), seq)
        values = np.fromiter(flat, dtype=np.int64, count=int(np.prod(shape))).reshape(shape)
    if kind == "np":
        return values
    import torch

    return torch.from_numpy(values)


# --- files -----------------------------------------------------------------------

def _json_lines(tok: Tokenizer, job: tuple[str, list[tuple[int, str, str | None]], int | None]) -> str:
    """A tokenize_file job: (source name, [(line number, text, pair)], max_length) -> its JSON lines."""
    name, lines, max_length = job
    out = []
    for line_no, text, pair in lines:
        try:
            enc = tok.encode(text, pair, max_length=max_length, truncation=max_length is not None)
        except ValueError as e:
            raise ValueError(f"{name}:{line_no}: {e}") from None
        record = {"tokens": tok.convert_ids_to_tokens(enc.input_ids), "input_ids": enc.input_ids,
                  "token_type_ids": enc.token_type_ids, "offsets": enc.offsets}
        out.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(out)


def tokenize_file(model: str | os.PathLike, input: str | os.PathLike = "-", output: str | os.PathLike = "-", *,
                  max_length: int | None = None, do_lower_case: bool | None = None, workers: int | None = None,
                  progress: bool = True) -> int:
    """Tokenize a text file to JSON lines; returns the number of lines written.

    Each input line is a text, or two texts separated by one tab (a pair). Each output
    line holds tokens, input_ids, token_type_ids and offsets (character spans into the
    line's own text). Without max_length, nothing is truncated. `model` is a model or
    tokenizer folder, a vocab.txt, or an installed model name. Large files go to
    `workers` processes (None: every core); the output is the same for any number.
    A file output appears whole or not at all.
    """
    from tqdm import tqdm

    name = "<stdin>" if str(input) == "-" else str(input)
    if name != "<stdin>" and not os.path.isfile(input):
        raise FileNotFoundError(f"{input}: no such file")
    tok = Tokenizer.from_pretrained(model, do_lower_case=do_lower_case)
    size = _POOL_MIN_CHARS if name == "<stdin>" else os.path.getsize(input) if os.path.isfile(input) else 0
    n_workers = tok._workers_for(workers, size)

    def records() -> Iterator[tuple[int, str, str | None]]:
        for line_no, line in read_lines(input):
            fields = line.split("\t")
            if len(fields) > 2:
                raise ValueError(f"{name}:{line_no}: {len(fields)} tab-separated fields; "
                                 "expected a text or a text pair")
            yield line_no, fields[0], fields[1] if len(fields) == 2 else None

    def jobs() -> Iterator[tuple]:
        block: list[tuple[int, str, str | None]] = []
        for record in records():
            block.append(record)
            if len(block) == _LINES_PER_JOB:
                yield name, block, max_length
                block = []
        if block:
            yield name, block, max_length

    written = 0

    def write(f: Any) -> None:
        nonlocal written
        results = tok._map(jobs(), n_workers, remote=_json_lines, local=lambda job: _json_lines(tok, job))
        with tqdm(unit="line", desc="tokenize", disable=not progress, file=sys.stderr) as bar:
            for text in results:
                f.write(text)
                n = text.count("\n")
                written += n
                bar.update(n)

    with tok:
        if str(output) == "-":
            write(sys.stdout)
            sys.stdout.flush()
        else:
            atomic_write(output, lambda tmp: _write_file(tmp, write))
    return written


def _write_file(path: Path, write: Callable[[Any], None]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        write(f)
