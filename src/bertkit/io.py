"""Files in and out: atomic writes of a file or a folder, line and JSON-lines readers that name
file and line in their errors, input lists with globs, and chunking and sharding of long streams.

Every file bertkit writes goes through `atomic_write` or `atomic_dir`: a crash leaves either
the old version or the new one, never half of one. Temporary names all follow one scheme,
`.NAME.tmp-PID`, so `remove_stale_temps` can find what a killed process left behind.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
TMP_MARK = ".tmp-"
OLD_MARK = ".old-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files and folders get the permissions the user's umask gives (0644 / 0755 under 022),
# not mkstemp's private 0600: a server running as another user must be able to read an export.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def tmp_path(path: Path) -> Path:
    """The temporary sibling a write to `path` goes through."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call write(tmp) to fill a temporary sibling of `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as f:  # the data reaches the disk before the name points at it
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (NaN and infinity are refused: strict parsers reject them)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temporary folder, then put it in place of `path` as a whole.

        with atomic_dir(out / "best") as tmp:
            model.save_pretrained(tmp)

    Replacing a folder takes two renames (old aside, new in); a crash between them leaves the old
    folder under `.NAME.old-PID`, which `recover_dir` puts back. On an exception the temporary
    folder is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=DIR_MODE)
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder `src` onto `dst`, whose old contents go (see atomic_dir)."""
    old = dst.with_name(f".{dst.name}{OLD_MARK}{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: str | os.PathLike) -> None:
    """Undo a replacement that a crash cut between its two renames: put the old folder back."""
    path = Path(path)
    olds = sorted(path.parent.glob(f".{path.name}{OLD_MARK}*"), key=lambda p: p.stat().st_mtime)
    if olds and not path.exists():
        os.replace(olds.pop(), path)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        for old in path.parent.glob(f".{path.name}{OLD_MARK}*"):
            shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that killed writers left in `folder`."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{TMP_MARK}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# ---------------------------------------------------------------------------- reading


def _source_name(path: str | os.PathLike) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text without its line break) for every line of a UTF-8 file ('-': stdin).

    A line that is not valid UTF-8 is an error naming the file, line and byte: replacing the
    bytes would hide corrupt data.
    """
    name = _source_name(path)
    if name != "<stdin>" and not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    f = sys.stdin.buffer if name == "<stdin>" else open(path, "rb")
    try:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{name}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                                 f"position {e.start} of the line)") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark is not text
            yield lineno, line.rstrip("\n").removesuffix("\r")
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON-lines file."""
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{_source_name(path)}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{_source_name(path)}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def json_field(obj: dict, field: str, where: str) -> str:
    """obj[field] as a string, or an error naming where it was read."""
    if field not in obj:
        raise ValueError(f"{where}: no string field {field!r} (fields: {', '.join(obj) or 'none'})")
    if not isinstance(obj[field], str):
        raise ValueError(f"{where}: no string field {field!r} (it holds a {type(obj[field]).__name__})")
    return obj[field]


def numbered_texts(path: str | os.PathLike, *, keep_blank: bool,
                   text_field: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) for the texts of a file: one per line, or `text_field` of each JSON
    line (the default for .jsonl).

    keep_blank=True yields blank lines as empty texts, so that output row n is input line n
    (embedding); keep_blank=False skips them (counting words for a vocabulary).
    """
    if text_field is None and str(path).endswith(".jsonl"):
        text_field = "text"
    if text_field is not None:
        for lineno, obj in read_jsonl(path):
            yield lineno, json_field(obj, text_field, f"{_source_name(path)}:{lineno}")
        return
    for lineno, line in read_lines(path):
        if keep_blank or line.strip():
            yield lineno, line


def read_texts(path: str | os.PathLike, *, keep_blank: bool, text_field: str | None = None) -> Iterator[str]:
    """The texts of a file, without their line numbers (see numbered_texts)."""
    for _, text in numbered_texts(path, keep_blank=keep_blank, text_field=text_field):
        yield text


def expand_paths(patterns: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Input files named by paths and glob patterns ("data/*.jsonl", "**" too), in the order given,
    each pattern's matches sorted; "-" is stdin. A path that is missing or a pattern that matches
    no file is an error naming it.

    ["b.txt", "parts/*.txt"] -> ["b.txt", "parts/0.txt", "parts/1.txt"]
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    paths: list[str] = []
    for pattern in map(str, patterns):
        if pattern == "-" or Path(pattern).is_file():
            paths.append(pattern)
        elif any(c in pattern for c in "*?["):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"{pattern}: no file matches")
            paths += matches
        elif Path(pattern).is_dir():
            raise IsADirectoryError(f"{pattern}: is a folder; give its files (e.g. {pattern}/*.txt)")
        else:
            raise FileNotFoundError(f"{pattern}: no such file")
    if not paths:
        raise ValueError("no input files given")
    return paths


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter), streaming: for inputs larger than memory."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def shard(items: Iterable[T], index: int, count: int) -> Iterator[T]:
    """Part `index` of `count` (0 <= index < count): items index, index + count, index + 2 * count...

    The parts are disjoint and together hold every item, whatever the stream's length (which need
    not be known); item k of part i is item i + k * count of the whole, so parts interleave back
    with `whole[i::count] = part_i`.
    """
    check_shard(index, count)
    return itertools.islice(items, index, None, count)


def check_shard(index: int, count: int) -> None:
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
