"""Embedding a corpus of any size: texts streamed in, vectors streamed out, resumable, shardable.

    inputs (text files, JSON lines, globs, stdin) -> rows (file, line, text); with shard i/n every
    n-th row from the i-th -> windows of `window` rows -> Embedder (length-sorted batches within
    the window) -> vectors appended to the output in input order, one chunk per window.

Memory is bounded by the window (its texts, their word pieces, its vectors), never by the corpus.

Output: one .npy (what np.load(..., mmap_mode="r") opens whatever its size) or JSON lines
({"line": n, "embedding": [...]}, plus "file" when there are several inputs). The .npy is written
as OUT.partial: a header, then each window's float32 rows as they come; the header, whose length
numpy keeps the same whatever the row count, is rewritten with the final shape at the end, so the
file is byte for byte what np.save of the whole array writes. Then OUT.partial becomes OUT.

Resume: after each chunk reaches the disk, OUT.embed.json records the settings, the rows done, the
partial file's size, a hash of the last chunk and a running hash of the texts embedded so far (it
stays beside OUT at the end, saying what made it). A killed job rerun with the same settings cuts
OUT.partial back to the last recorded chunk, checks that chunk, re-reads the inputs it had done
(checking their hash: changed inputs are refused) and continues. The windows, and so the batches,
are the same as an uninterrupted run's, so the output is byte-identical. With other settings it
refuses, naming the difference; resume=False starts over. A complete OUT from the same settings
and inputs is not recomputed unless overwrite=True.

Several machines: shard=(i, n) on each (disjoint rows, together all of them); the parts interleave
back with `whole[i::n] = np.load(part_i)`. On a Ray cluster, embed_ray maps the Embedder over a
Ray dataset with actors that each load the model once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format
from tqdm import tqdm

from bertkit import io
from bertkit.infer import Embedder

FORMAT = "bertkit-embed-v1"
WINDOW = 4096  # rows sorted together and written as one chunk
Row = tuple[str, int, str]  # (input file, line number, text)


# ---------------------------------------------------------------------------- the model call


def _embedded(embedder: Embedder, windows: Iterable[list[Row]], batch_size: int,
              overlap: bool) -> Iterator[tuple[list[Row], np.ndarray]]:
    """(window, its vectors) for each window, in order. With overlap, window k + 1 is prepared in a
    thread (which only waits on the tokenizer's worker processes) while the model runs window k."""
    if not overlap:
        for window in windows:
            yield window, embedder.run(embedder.prepare([t for _, _, t in window]), batch_size)
        return
    with ThreadPoolExecutor(1) as ahead:
        pending = None
        for window in windows:
            job = ahead.submit(embedder.prepare, [t for _, _, t in window])
            if pending is not None:
                yield pending[0], embedder.run(pending[1].result(), batch_size)
            pending = (window, job)
        if pending is not None:
            yield pending[0], embedder.run(pending[1].result(), batch_size)


# ---------------------------------------------------------------------------- inputs


def read_rows(paths: Sequence[str], text_field: str | None = None) -> Iterator[Row]:
    """(file, line, text) for every text of every input, in order; blank lines are empty texts."""
    for path in paths:
        for line, text in io.numbered_texts(path, keep_blank=True, text_field=text_field):
            yield path, line, text


def _texts_digest(previous: str, texts: Iterable[str]) -> str:
    """Running hash of the texts embedded so far, extended by one chunk's texts."""
    h = hashlib.sha256(previous.encode())
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _input_stats(paths: Sequence[str]) -> list:
    """What a complete output is compared against: each input's name, size and modification time."""
    return [p if p == "-" else [os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths]


def model_fingerprint(embedder: Embedder) -> str:
    """sha256 of the files the model was loaded from (weights, config, vocabulary), or of its
    tensors and vocabulary when it was built in memory."""
    h = hashlib.sha256()
    source = getattr(embedder.model, "source_dir", None)
    if source is not None:
        patterns = ("*.safetensors", "*.onnx", "*.bin", "*.index.json", "config.json", "bert_config.json", "vocab.txt",
                    "tokenizer_config.json", "bert_model.ckpt*")
        for path in sorted({p for pattern in patterns for p in Path(source).glob(pattern) if p.is_file()}):
            h.update(path.name.encode())
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        return h.hexdigest()
    for name, value in embedder.model.state_dict().items():
        if isinstance(value, torch.Tensor):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update("\n".join(embedder.tokenizer.vocab).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------- the output file


class Writer:
    """The output being filled: OUT.partial grows chunk by chunk (each fsynced) and becomes OUT in
    finish(). '-' writes JSON lines to stdout as they come."""

    def __init__(self, output: str | os.PathLike, dim: int, several_inputs: bool):
        self.path = Path(output)
        self.kind = "stdout" if str(output) == "-" else "npy" if str(output).endswith(".npy") else "jsonl"
        self.dim, self.several_inputs = dim, several_inputs
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.state_path = self.path.with_name(self.path.name + ".embed.json")  # the job's state (embed_corpus)
        self.file = None
        self.size = 0

    @staticmethod
    def check(output: str | os.PathLike) -> None:
        out = str(output)
        if out != "-" and not out.endswith((".npy", ".jsonl", ".json")):
            raise ValueError(f"{out}: output must end in .npy or .jsonl (or be '-' for JSON lines on stdout)")

    def header(self, rows: int) -> bytes:
        """The .npy header for `rows` rows: 128 bytes whatever the count (numpy leaves room to grow)."""
        if self.kind != "npy":
            return b""
        f = BytesIO()
        npy_format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, self.dim)})
        return f.getvalue()

    def encode(self, rows: Sequence[Row], vectors: np.ndarray) -> bytes:
        if self.kind == "npy":
            return np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        lines = []
        for (path, line, _), vector in zip(rows, vectors):
            record = {"file": path, "line": line} if self.several_inputs else {"line": line}
            lines.append(json.dumps({**record, "embedding": vector.tolist()}) + "\n")
        return "".join(lines).encode("utf-8")

    def lock(self) -> None:
        """Open OUT.partial (creating it), locked against a second writer; nothing in it changes yet."""
        if self.kind == "stdout":
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(os.open(self.partial, os.O_RDWR | os.O_CREAT, io.FILE_MODE), "r+b")
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise FileExistsError(f"{self.partial}: another process is writing it (a second embed to "
                                  f"{self.path}?)") from None

    def start(self, keep: int = 0) -> None:
        """Continue after the first `keep` bytes of OUT.partial (0: a new file, its header first)."""
        if self.kind == "stdout":
            return
        self.file.truncate(keep)
        self.file.seek(keep)
        self.size = keep
        if keep == 0:
            self.write(self.header(0))

    def write(self, data: bytes) -> int:
        """Append `data` and return the offset it starts at; it is on the disk when this returns."""
        offset = self.size
        if self.kind == "stdout":
            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()
        else:
            self.file.write(data)
            self.file.flush()
            os.fsync(self.file.fileno())
        self.size += len(data)
        return offset

    def finish(self, rows: int, before_rename=None) -> None:
        """The final header, then OUT.partial -> OUT (`before_rename` runs in between)."""
        if self.kind == "stdout":
            return
        if self.kind == "npy":
            self.file.seek(0)
            self.file.write(self.header(rows))
            self.file.flush()
            os.fsync(self.file.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(self.partial, self.path)
        self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()  # and the lock with it
            self.file = None


# ---------------------------------------------------------------------------- the job


def embed_corpus(model: str | os.PathLike | Embedder, inputs: str | os.PathLike | Sequence[str | os.PathLike],
                 output: str | os.PathLike, *, text_field: str | None = None, batch_size: int = 32,
                 window: int = WINDOW, shard: tuple[int, int] | None = None, workers: int | None = None,
                 resume: bool = True, overwrite: bool = False, progress: bool = True,
                 **embedder_options) -> dict:
    """Embed every text of `inputs` into `output` (.npy, .jsonl, or '-' for JSON lines on stdout).

    embed_corpus("all-MiniLM-L6-v2", ["docs/*.jsonl"], "vectors.npy")
        -> {"output": "vectors.npy", "rows": 1000000, "dim": 384, "blank": 0, "resumed_at": 0,
            "already_complete": False, "seconds": 5123.4}

    inputs: files or glob patterns, one text per line (blank lines are embedded as empty texts so
    row n is line n), or JSON lines with the text in `text_field` ("text" for .jsonl); '-' is stdin.
    window: rows length-sorted together and written as one chunk: memory, padding and what a crash
    can cost all grow with it. shard: (i, n) embeds rows i, i + n, i + 2n, ... only.
    workers: processes that tokenize (None: the tokenizer's default); with more than one, the next
    window is tokenized while the model runs. embedder_options: Embedder's (pooling, dtype,
    max_length, long_inputs, stride, normalize, device).
    """
    start = time.perf_counter()
    if batch_size < 1 or window < 1:
        raise ValueError(f"batch_size and window must be at least 1, got {batch_size} and {window}")
    Writer.check(output)
    paths = io.expand_paths(inputs)
    if shard is not None:
        io.check_shard(*shard)
    if isinstance(model, Embedder):
        if embedder_options:
            raise ValueError(f"an Embedder brings its own options; {', '.join(embedder_options)} cannot change them")
        embedder = model
        embedder.workers = workers if workers is not None else embedder.workers
    else:
        embedder = Embedder.from_pretrained(model, workers=workers, **embedder_options)
    writer = Writer(output, embedder.dim, several_inputs=len(paths) > 1)
    name = ", ".join(paths) if shard is None else f"shard {shard[0]}/{shard[1]} of {', '.join(paths)}"
    settings = {
        "model": model_fingerprint(embedder), "pooling": embedder.pooling, "dtype": embedder.dtype,
        "max_length": embedder.max_length, "long_inputs": embedder.long_inputs, "stride": embedder.stride,
        "normalize": embedder.normalize, "device": str(embedder.device), "dim": embedder.dim,
        "batch_size": batch_size, "window": window, "inputs": [p if p == "-" else os.path.abspath(p) for p in paths],
        "text_field": text_field, "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
    }
    state_path = writer.state_path
    state = _previous_run(writer, settings, paths, resume, overwrite)
    summary = {"output": str(output), "dim": embedder.dim}
    if state is not None and state["complete"]:
        print(f"embed: {writer.path} is complete ({state['rows']} rows); --overwrite recomputes it", file=sys.stderr)
        return {**summary, "rows": state["rows"], "blank": state["blank"], "resumed_at": state["rows"],
                "already_complete": True, "seconds": time.perf_counter() - start}

    rows = read_rows(paths, text_field)
    if shard is not None:
        rows = io.shard(rows, *shard)
    done, blank, digest = 0, 0, ""
    writer.lock()
    try:
        if state is None:
            state_path.unlink(missing_ok=True)
            writer.start()
        else:
            writer.start(keep=_check_partial(writer, state))
            done, blank, digest = _skip_done(rows, state, window, name)
        resumed_at = done
        overlap = workers is not None and workers > 1
        # closed (its line ended) before any error below is printed
        with tqdm(unit="text", desc="embed", initial=done, disable=not progress, file=sys.stderr) as bar:
            for window_rows, vectors in _embedded(embedder, io.chunked(rows, window), batch_size, overlap):
                texts = [t for _, _, t in window_rows]
                data = writer.encode(window_rows, vectors)
                offset = writer.write(data)
                done += len(window_rows)
                blank += sum(1 for t in texts if not t.strip())
                digest = _texts_digest(digest, texts)
                if writer.kind != "stdout":
                    state = {"format": FORMAT, "settings": settings, "input_files": _input_stats(paths), "rows": done,
                             "blank": blank, "bytes": writer.size, "texts_sha256": digest,
                             "last_chunk": {"offset": offset, "bytes": len(data), "sha256": _sha256(data)},
                             "complete": False}
                    io.write_json(state_path, state)
                bar.update(len(window_rows))
        if done == blank:  # nothing worth keeping
            writer.partial.unlink(missing_ok=True)
            state_path.unlink(missing_ok=True)
            raise ValueError(f"{name}: no texts (the input is empty)")
        if state is not None:
            state = {**state, "input_files": _input_stats(paths), "bytes": writer.size, "complete": True}
        writer.finish(done, before_rename=lambda: io.write_json(state_path, state) if state else None)
    finally:
        writer.close()
    if blank:
        print(f"embed: {name}: {blank} blank line(s) embedded as empty texts", file=sys.stderr)
    return {**summary, "rows": done, "blank": blank, "resumed_at": resumed_at, "already_complete": False,
            "seconds": time.perf_counter() - start}


def _previous_run(writer: Writer, settings: dict, paths: Sequence[str], resume: bool,
                  overwrite: bool) -> dict | None:
    """What an earlier run left: its state when it is complete (nothing to do) or unfinished and to be
    continued, None to start afresh. Other settings are refused, naming the difference."""
    state = _read_state(writer.state_path) if writer.kind != "stdout" else None
    if state is None or overwrite:
        return None
    if state["complete"]:
        if not writer.path.exists() and writer.partial.is_file() and writer.partial.stat().st_size == state["bytes"]:
            os.replace(writer.partial, writer.path)  # killed between its last two steps
        if not writer.path.exists():
            return None
        before = {**state["settings"], "input files": state["input_files"]}
        now = {**settings, "input files": _input_stats(paths)}
        if before != now:
            raise FileExistsError(f"{writer.path} exists, made with other settings or inputs "
                                  f"({_differences(before, now)}); pass --overwrite to replace it")
        return state
    if not resume:
        return None
    if state["settings"] != settings:
        raise ValueError(f"{writer.path}: an unfinished run with other settings "
                         f"({_differences(state['settings'], settings)}); rerun with the same settings to "
                         "continue it, or with --no-resume to start over")
    return state


def _differences(before: dict, now: dict) -> str:
    keys = sorted(set(before) | set(now))
    return "; ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in keys if before.get(k) != now.get(k))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_state(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: damaged ({e}); delete it or pass --no-resume") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "complete" not in state:
        raise ValueError(f"{path}: not a {FORMAT} state file; delete it or pass --no-resume")
    return state


def _check_partial(writer: Writer, state: dict) -> int:
    """Bytes of OUT.partial that the state vouches for; its last chunk is checked against its hash."""
    size = writer.partial.stat().st_size if writer.partial.is_file() else 0
    chunk = state["last_chunk"]
    if size < state["bytes"]:
        raise ValueError(f"{writer.partial}: {size} bytes, shorter than the {state['bytes']} its state "
                         "records (damaged or replaced); pass --no-resume to start over")
    with open(writer.partial, "rb") as f:
        f.seek(chunk["offset"])
        if _sha256(f.read(chunk["bytes"])) != chunk["sha256"]:
            raise ValueError(f"{writer.partial}: its last chunk (bytes {chunk['offset']}..{state['bytes']}) "
                             "does not match its recorded hash (damaged); pass --no-resume to start over")
    return state["bytes"]


def _skip_done(rows: Iterator[Row], state: dict, window: int, name: str) -> tuple[int, int, str]:
    """Read past the rows already embedded, chunk by chunk as they were written, checking their hash."""
    total, done, blank, digest = state["rows"], 0, 0, ""
    while done < total:
        texts = [t for _, _, t in islice(rows, min(window, total - done))]
        if not texts:
            raise ValueError(f"{name}: {done} rows, fewer than the {total} the unfinished run embedded "
                             "(the inputs changed); pass --no-resume to start over")
        done += len(texts)
        blank += sum(1 for t in texts if not t.strip())
        digest = _texts_digest(digest, texts)
    if digest != state["texts_sha256"]:
        raise ValueError(f"{name}: the first {total} rows differ from those the unfinished run embedded "
                         "(the inputs changed); pass --no-resume to start over")
    return done, blank, digest


# ---------------------------------------------------------------------------- Ray


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError("Ray is not installed: pip install 'bertkit[ray]'") from None
    return ray


class RayEmbedder:
    """A Ray actor's work: load the model once, then embed each batch of rows it is given.

    {"text": [n texts], ...} -> the same columns and "embedding" float32 [n, dim].
    """

    def __init__(self, model: str, column: str, batch_size: int, options: dict):
        self.embedder = Embedder.from_pretrained(model, **options)
        self.column, self.batch_size = column, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch[self.column]]
        return {**batch, "embedding": self.embedder.run(self.embedder.prepare(texts), self.batch_size)}


def read_ray(paths: Sequence[str], text_field: str | None = None):
    """A Ray dataset of the inputs' rows, read on the cluster by the reader embed_corpus uses (the
    same rows, line numbers and file:line errors): columns "file" (as named here), "line", "text".
    Every node must see the files at the same path (a shared file system)."""
    ray = _import_ray()
    if "-" in paths:
        raise ValueError("a Ray job cannot read stdin: give input files")

    def rows(batch: dict[str, np.ndarray]) -> Iterator[dict[str, list]]:
        for name, path in zip(batch["file"], batch["path"]):
            for chunk in io.chunked(io.numbered_texts(path, keep_blank=True, text_field=text_field), 1024):
                yield {"file": [name] * len(chunk), "line": [n for n, _ in chunk], "text": [t for _, t in chunk]}

    files = ray.data.from_items([{"file": str(p), "path": os.path.abspath(p)} for p in paths])
    # Blocks of about 256 KiB of text (Ray's default, 128 MiB, would hand a whole file to one actor),
    # one file per task; reading takes no CPU slot, so actors may hold every CPU without starving it.
    files.context.target_max_block_size = 1 << 18
    return files.map_batches(rows, batch_size=1, num_cpus=0)


def embed_ray(model: str | os.PathLike, data: Any, *, text_field: str | None = None, batch_size: int = 32,
              window: int = WINDOW, actors: int | None = None, cpus_per_actor: float = 1,
              **embedder_options) -> Any:
    """Map an Embedder over a Ray dataset -> the dataset with an "embedding" column, rows in input order.

    ds = embed_ray("all-MiniLM-L6-v2", ray.data.read_parquet("s3://bucket/docs/"), text_field="body")
    ds.write_parquet("s3://bucket/vectors/")   # or: for batch in ds.iter_batches(): ...

    data: a ray.data.Dataset whose `text_field` column ("text" by default) holds the texts (from
    any Ray reader: read_parquet, read_text, s3://...), or input paths (read_ray). `actors` Ray
    actors (default: one per `cpus_per_actor` CPUs of the cluster) each load the model once (from a
    path every node sees, or an installed model name) and embed windows of `window` rows, each
    length-sorted into batches as embed_corpus does. A dataset read with Ray's own readers should
    read with num_cpus=0 when the actors take every CPU (else reads wait behind them).
    """
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init()  # a local instance, or the cluster at $RAY_ADDRESS
    if not isinstance(data, ray.data.Dataset):
        data = read_ray(io.expand_paths(data), text_field)
        text_field = "text"
    actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_actor))
    embedded = data.map_batches(RayEmbedder, batch_size=window, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
                                fn_constructor_kwargs={"model": str(model), "column": text_field or "text",
                                                       "batch_size": batch_size, "options": embedder_options})
    # Ray may hand back batches as they finish; this dataset (and the one it came from, which
    # shares its context) keeps them in input order.
    embedded.context.execution_options.preserve_order = True
    return embedded


def embed_corpus_ray(model: str | os.PathLike, inputs: str | Sequence[str], output: str | os.PathLike, *,
                     text_field: str | None = None, batch_size: int = 32, window: int = WINDOW,
                     actors: int | None = None, progress: bool = True, **embedder_options) -> dict:
    """embed_corpus's output (.npy / .jsonl / '-', same rows) computed on a Ray cluster by embed_ray.

    The driver writes the vectors as they arrive, in input order. There is no resume: Ray retries
    failed tasks itself, and a killed driver starts over.
    """
    start = time.perf_counter()
    Writer.check(output)
    paths = io.expand_paths(inputs)
    ds = embed_ray(model, read_ray(paths, text_field), batch_size=batch_size, window=window, actors=actors,
                   **embedder_options)
    writer, done, blank = None, 0, 0
    bar = tqdm(unit="text", desc="embed (ray)", disable=not progress, file=sys.stderr)
    try:
        for batch in ds.iter_batches(batch_size=window, batch_format="numpy"):
            vectors = np.stack(batch["embedding"]).astype(np.float32)
            if writer is None:
                writer = Writer(output, vectors.shape[1], several_inputs=len(paths) > 1)
                writer.lock()
                writer.state_path.unlink(missing_ok=True)  # an earlier run's state would not describe this one
                writer.start()
            rows = list(zip(map(str, batch["file"]), map(int, batch["line"]), map(str, batch["text"])))
            writer.write(writer.encode(rows, vectors))
            done += len(rows)
            blank += sum(1 for _, _, t in rows if not t.strip())
            bar.update(len(rows))
        bar.close()
        if done == blank:
            raise ValueError(f"{', '.join(paths)}: no texts (the input is empty)")
        writer.finish(done)
    except BaseException:
        if writer is not None:
            writer.close()
            writer.partial.unlink(missing_ok=True)
        raise
    if blank:
        print(f"embed: {', '.join(paths)}: {blank} blank line(s) embedded as empty texts", file=sys.stderr)
    return {"output": str(output), "dim": writer.dim, "rows": done, "blank": blank, "resumed_at": 0,
            "already_complete": False, "seconds": time.perf_counter() - start}
