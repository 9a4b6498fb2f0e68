"""`bertkit prepare`: corpus -> NSP instances -> compact numpy shards on disk, and reading them back.

Documents are read in groups of `docs_per_shard`; each group becomes one shard, built by a worker
process with its own RNG seeded from (seed, shard number), so the output is the same for a seed
whatever the number of workers. Random B segments come from other documents of the same shard,
which keeps memory bounded by a few shards' documents.

Several machines: `shard=(i, n)` keeps documents i, i + n, i + 2n, ... and writes them to
OUTPUT/part-i-of-n; the parts are disjoint and together the whole corpus. Shard numbers interleave
(group k of part i is shard k * n + i), so every shard of every part has its own RNG seed.
`open_prepared(OUTPUT)` reads all parts as one corpus.

A shard is a directory of four .npy arrays, memory-mapped when read:
  ids.npy      uint16 (uint32 for vocabularies over 65,536) [tokens]   [CLS] A [SEP] B [SEP] of every instance
  offsets.npy  int64 [instances + 1]                                   instance i is ids[offsets[i]:offsets[i+1]]
  a_end.npy    uint16 [instances]                                      len(A) + 2: where token type 1 starts
  next.npy     uint8 [instances]                                       NSP label: 1 = random B (NotNext)
meta.json (written last, so its presence means the output is complete) records the settings,
the vocabulary fingerprint and every count; vocab.txt + tokenizer_config.json sit beside it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import multiprocessing.pool
import os
import random
import shutil
from bisect import bisect_right
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bertkit.data.corpus import CorpusStats, read_documents
from bertkit.data.instances import document_instances, tokenize_document
from bertkit.io import check_shard, chunked
from bertkit.io import shard as take_shard

FORMAT = "bertkit-pretraining-v1"
META = "meta.json"


def vocab_fingerprint(vocab: dict[str, int]) -> str:
    text = "\n".join(sorted(vocab, key=vocab.__getitem__))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------- building shards

_tokenizer = None  # one per worker process, loaded once by _init_worker


def _init_worker(vocab: str) -> None:
    global _tokenizer
    from bertkit.tokenizer import Tokenizer

    _tokenizer = Tokenizer.from_pretrained(vocab)


def build_shard(number: int, documents: list[list[str]], out_dir: str, max_seq_length: int,
                short_seq_prob: float, dupe_factor: int, seed: int) -> dict:
    """Tokenize one group of documents, make its instances, write shard `number`; return its counts."""
    tok = _tokenizer
    stats = CorpusStats()
    docs = [tokenize_document(d, tok, max_seq_length - 3, stats) for d in documents]
    stats.empty_documents += sum(not d for d in docs)  # every sentence empty after tokenization
    docs = [d for d in docs if d]
    rng = random.Random(f"{seed}/{number}")  # string seeds hash deterministically
    ids: list[int] = []
    offsets, a_end, nxt = [0], [], []
    # A document's instances stay together (all dupe passes), so holding out the last instances
    # holds out whole documents (random B segments aside, which come from any document of the shard).
    for index in range(len(docs)):
        for _ in range(dupe_factor):
            for inst in document_instances(docs, index, max_seq_length, short_seq_prob, rng):
                ids += [tok.cls_token_id, *inst.tokens_a, tok.sep_token_id, *inst.tokens_b, tok.sep_token_id]
                offsets.append(len(ids))
                a_end.append(len(inst.tokens_a) + 2)
                nxt.append(int(inst.is_random_next))
    stats.instances = len(a_end)
    stats.next_instances = len(nxt) - sum(nxt)
    name = f"shard-{number:05d}"
    final = Path(out_dir) / name
    tmp = Path(out_dir) / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    id_dtype = np.uint16 if len(tok.vocab) <= 1 << 16 else np.uint32
    np.save(tmp / "ids.npy", np.asarray(ids, dtype=id_dtype))
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(tmp / "a_end.npy", np.asarray(a_end, dtype=np.uint16))
    np.save(tmp / "next.npy", np.asarray(nxt, dtype=np.uint8))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return {"name": name, "instances": stats.instances, "tokens": len(ids), "stats": stats.to_dict()}




def prepare(vocab: str | os.PathLike, inputs: list[str | os.PathLike], output: str | os.PathLike, *,
            max_seq_length: int = 128, short_seq_prob: float = 0.1, dupe_factor: int = 1, seed: int = 12345,
            docs_per_shard: int = 2000, workers: int | None = None, fmt: str = "auto", text_field: str = "text",
            shard: tuple[int, int] | None = None, progress: bool = True) -> dict:
    """Build pre-training shards from corpus files into `output`; print and return the counts.

    shard=(i, n): only part i of n (every n-th document), into output/part-i-of-n.
    """
    from bertkit.tokenizer import Tokenizer

    if not 8 <= max_seq_length <= 512:
        raise ValueError(f"max_seq_length must be between 8 and 512, got {max_seq_length}")
    if not 0 <= short_seq_prob <= 1:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
    if dupe_factor < 1 or docs_per_shard < 1:
        raise ValueError("dupe_factor and docs_per_shard must be >= 1")
    if shard:
        check_shard(*shard)
    for p in inputs:
        if not Path(p).is_file():
            raise FileNotFoundError(f"no corpus file at {p}")
    tok = Tokenizer.from_pretrained(vocab)  # fails early, in this process, on a bad vocabulary
    part, parts = shard or (0, 1)
    out = Path(output) / f"part-{part}-of-{parts}" if shard else Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # incomplete until rewritten at the end
    for old in out.glob("shard-*"):
        shutil.rmtree(old)
    workers = workers or os.cpu_count() or 1
    stats = CorpusStats()
    docs = read_documents(inputs, fmt, text_field, stats)
    if shard:  # every part reads every file: the reading counts are the whole corpus's
        docs = take_shard(docs, part, parts)
    groups = ((k * parts + part, group) for k, group in enumerate(chunked(docs, docs_per_shard)))
    args = (str(out), max_seq_length, short_seq_prob, dupe_factor, seed)
    shards: list[dict] = []
    bar = tqdm(unit="doc", desc="prepare", disable=not progress)

    kept = 0  # documents turned into shards (a part's own share)

    def collect(result: dict, n_docs: int) -> None:
        nonlocal kept
        kept += n_docs
        shards.append(result)
        stats.add(CorpusStats(**result["stats"]))
        bar.update(n_docs)

    if workers == 1:
        _init_worker(str(vocab))
        for n, group in groups:
            collect(build_shard(n, group, *args), len(group))
    else:
        # Bounded in-flight work: at most 2 groups per worker are held in memory at once.
        with mp.get_context("spawn").Pool(workers, _init_worker, (str(vocab),)) as pool:
            pending: list[tuple[int, mp.pool.AsyncResult]] = []
            for n, group in groups:
                pending.append((len(group), pool.apply_async(build_shard, (n, group, *args))))
                while len(pending) >= 2 * workers:
                    size, job = pending.pop(0)
                    collect(job.get(), size)
            for size, job in pending:
                collect(job.get(), size)
    bar.close()
    shards.sort(key=lambda s: s["name"])
    meta = {
        "format": FORMAT, "max_seq_length": max_seq_length, "short_seq_prob": short_seq_prob,
        "dupe_factor": dupe_factor, "seed": seed, "docs_per_shard": docs_per_shard,
        "vocab_size": len(tok.vocab), "vocab_sha1": vocab_fingerprint(tok.vocab), "do_lower_case": tok.do_lower_case,
        "inputs": [str(p) for p in inputs],
        "part": {"index": part, "count": parts, "documents": kept} if shard else None,
        "shards": [{k: s[k] for k in ("name", "instances", "tokens")} for s in shards],
        "stats": stats.to_dict(),
    }
    if stats.instances == 0:
        raise ValueError(f"no training instances from {len(inputs)} file(s): counts {stats.to_dict()}")
    tok.save_pretrained(out)  # the ids mean nothing without their vocabulary: keep it with them
    tmp = out / f".{META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / META)
    if progress:
        print(format_stats(stats, len(shards), out))
        if shard:
            print(f"part {part} of {parts}: {kept:,} of the {stats.documents:,} documents "
                  f"(every {parts}-th from document {part})")
    return meta


def format_stats(stats: CorpusStats, n_shards: int, out: Path) -> str:
    s = stats
    return "\n".join([
        f"wrote {s.instances:,} instances ({s.next_instances:,} IsNext, {s.instances - s.next_instances:,} NotNext) "
        f"in {n_shards} shard(s) to {out}",
        f"read {s.files:,} file(s), {s.documents:,} documents, {s.sentences:,} sentences",
        f"skipped: {s.empty_files:,} empty file(s), {s.empty_documents:,} empty document(s), "
        f"{s.empty_sentences:,} sentence(s) with no word pieces",
        f"kept with care: {s.single_sentence_documents:,} one-sentence document(s) (random-B pairs only), "
        f"{s.long_sentences:,} over-long sentence(s) cut into pieces, "
        f"{s.undecodable_lines:,} line(s) with invalid UTF-8 (bad bytes replaced)",
    ])


# ---------------------------------------------------------------------------- reading shards


class PretrainingData:
    """All instances of a prepared directory, memory-mapped, indexed 0..len-1 across shards.

    Opening checks every shard against meta.json (counts, offsets, ids below the vocabulary size),
    so a damaged or foreign file is a one-line error naming it, not a crash deep in training.
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)  # also a tokenizer directory: Tokenizer.from_pretrained(self.dir)
        meta_file = self.dir / META
        if not meta_file.is_file():
            raise FileNotFoundError(f"no {META} in {self.dir} (run `bertkit prepare` first, and let it finish)")
        try:
            self.meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta_file}: not valid JSON ({e})") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            found = self.meta.get("format") if isinstance(self.meta, dict) else None
            raise ValueError(f"{meta_file}: format {found!r}, expected {FORMAT!r}")
        for key in ("shards", "vocab_size", "vocab_sha1", "max_seq_length"):
            if key not in self.meta:
                raise ValueError(f"{meta_file}: no {key!r} (damaged or hand-edited; run `bertkit prepare` again)")
        self.shards = [_open_shard(self.dir, entry, self.meta["vocab_size"], meta_file)
                       for entry in self.meta["shards"]]
        self.starts = np.cumsum([0] + [len(s["a_end"]) for s in self.shards]).tolist()

    @property
    def max_seq_length(self) -> int:
        return self.meta["max_seq_length"]

    def __len__(self) -> int:
        return self.starts[-1]

    def length(self, i: int) -> int:
        s, j = self._locate(i)
        off = self.shards[s]["offsets"]
        return int(off[j + 1] - off[j])

    def lengths(self) -> np.ndarray:
        """Token count of every instance, [len(self)]."""
        return np.concatenate([np.diff(s["offsets"]) for s in self.shards])

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"instance {i} out of range 0..{len(self) - 1}")
        s = bisect_right(self.starts, i) - 1
        return s, i - self.starts[s]

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        """(input_ids int64 [seq], a_end, is_random_next) of instance i."""
        s, j = self._locate(i)
        sh = self.shards[s]
        ids = np.asarray(sh["ids"][sh["offsets"][j]:sh["offsets"][j + 1]], dtype=np.int64)
        return ids, int(sh["a_end"][j]), int(sh["next"][j])

    def fingerprint(self) -> str:
        """Identifies the prepared data: the same for a copy of the folder, different after a new `prepare`."""
        keys = ("format", "max_seq_length", "short_seq_prob", "dupe_factor", "seed", "vocab_sha1", "shards")
        return hashlib.sha1(json.dumps({k: self.meta.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()

    def check_vocab(self, vocab: dict[str, int]) -> None:
        """Refuse to train a model whose vocabulary is not the one the ids were made with."""
        if vocab_fingerprint(vocab) != self.meta["vocab_sha1"]:
            raise ValueError(f"{self.dir}: prepared with a different vocabulary than the model's "
                             f"({self.meta['vocab_size']} vs {len(vocab)} entries, or different order)")


ARRAYS = {"ids": (np.uint16, np.uint32), "offsets": (np.int64,), "a_end": (np.uint16,), "next": (np.uint8,)}


def _open_shard(directory: Path, entry: dict, vocab_size: int, meta_file: Path) -> dict[str, np.ndarray]:
    """The four arrays of one shard (memory-mapped), each checked against meta.json; ValueError names the file."""
    name = entry.get("name") if isinstance(entry, dict) else None
    # A shard name is one folder inside `directory`: meta.json may not point anywhere else.
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"{meta_file}: shard name {name!r} is not a folder inside {directory}")
    arrays = {}
    for key, dtypes in ARRAYS.items():
        path = directory / name / f"{key}.npy"
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise ValueError(f"{path}: missing (run `bertkit prepare` again)") from None
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path}: truncated or damaged ({e}); run `bertkit prepare` again") from None
        if a.ndim != 1 or a.dtype not in dtypes:
            raise ValueError(f"{path}: expected a 1-D {' or '.join(np.dtype(t).name for t in dtypes)} array, "
                             f"got {a.dtype} with shape {a.shape}")
        arrays[key] = a
    ids, offsets, a_end, nxt = arrays["ids"], arrays["offsets"], arrays["a_end"], arrays["next"]
    shard = directory / name
    n, tokens = entry.get("instances"), entry.get("tokens")
    if not (len(a_end) == len(nxt) == len(offsets) - 1 == n) or len(ids) != tokens:
        raise ValueError(f"{shard}: {len(a_end)} instances and {len(ids)} tokens on disk, {meta_file} says "
                         f"{n} and {tokens}")
    lengths = np.diff(offsets)
    if n and (offsets[0] != 0 or offsets[-1] != len(ids) or lengths.min() < 3):
        raise ValueError(f"{shard / 'offsets.npy'}: offsets must rise from 0 to {len(ids)} (the ids' length), "
                         "by at least 3 tokens per instance")
    if n and (a_end.min() < 2 or (a_end >= lengths).any() or nxt.max() > 1):
        raise ValueError(f"{shard}: a_end.npy or next.npy holds values outside their instances")
    if tokens and int(ids.max()) >= vocab_size:
        raise ValueError(f"{shard / 'ids.npy'}: token id {int(ids.max())} is not in the vocabulary "
                         f"of {vocab_size} entries ({meta_file})")
    return arrays


# ---------------------------------------------------------------------------- parts of a corpus

# What the parts of one corpus share; the inputs by file name (each machine may mount them elsewhere).
PART_SETTINGS = ("format", "max_seq_length", "short_seq_prob", "dupe_factor", "seed", "docs_per_shard",
                 "vocab_sha1", "do_lower_case")


def open_prepared(directory: str | os.PathLike) -> PretrainingData:
    """A folder `bertkit prepare` wrote, or a folder of its parts (`prepare --shard i/n`, one
    part-i-of-n folder each) read as one corpus."""
    folder = Path(directory)
    parts = sorted(p for p in folder.glob("part-*-of-*") if (p / META).is_file())
    if (folder / META).is_file() and parts:
        raise ValueError(f"{folder}: holds both a whole prepared corpus ({META}) and parts ({parts[0].name}, ...); "
                         "keep one")
    return PretrainingParts(parts) if parts else PretrainingData(folder)


class PretrainingParts(PretrainingData):
    """The parts of one corpus, prepared separately, as one: instances of part 0, then part 1, ...

    Every part must be there once, all prepared with the same settings and vocabulary. `dir` is
    the first part's folder (each holds the vocabulary).
    """

    def __init__(self, folders: list[Path]):
        # Each part is opened (and checked) on its own; this object only chains their shards.
        parts = [PretrainingData(f) for f in folders]
        for p in parts:
            if not p.meta.get("part"):
                raise ValueError(f"{p.dir}: not a part (prepared without --shard) among the parts of {p.dir.parent}")
        first = parts[0]
        count = first.meta["part"]["count"]
        for p in parts[1:]:
            for key in (*PART_SETTINGS, "inputs"):
                mine, theirs = p.meta.get(key), first.meta.get(key)
                if key == "inputs":
                    mine, theirs = [Path(x).name for x in mine or []], [Path(x).name for x in theirs or []]
                if mine != theirs:
                    raise ValueError(f"{p.dir} and {first.dir}: prepared with different {key} "
                                     f"({mine!r} vs {theirs!r}); they are not parts of one corpus")
        indices = sorted(p.meta["part"]["index"] for p in parts)
        if {p.meta["part"]["count"] for p in parts} != {count} or indices != list(range(count)):
            found = ", ".join(p.dir.name for p in parts)
            raise ValueError(f"{first.dir.parent}: parts {found} are not parts 0 to {count - 1} of {count}, "
                             "each once (one missing, or left over from another split?)")
        parts.sort(key=lambda p: p.meta["part"]["index"])
        self.dir = parts[0].dir
        self.meta = {**parts[0].meta, "part": None, "parts": [str(p.dir) for p in parts],
                     "shards": [{**s, "name": f"{p.dir.name}/{s['name']}"} for p in parts for s in p.meta["shards"]]}
        self.shards = [s for p in parts for s in p.shards]
        self.starts = np.cumsum([0] + [len(s["a_end"]) for s in self.shards]).tolist()
