"""bertkit.hub: model names to local folders, never a download, and no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bertkit import hub


def test_resolve_directory_package_and_hub_cache(minilm, tmp_path, monkeypatch):
    assert hub.resolve(minilm) == minilm
    assert hub.resolve(hub.DEFAULT_MODEL) == minilm
    assert hub.resolve("all-MiniLM-L6-v2") == minilm
    # The offline Hugging Face cache: hub/models--org--name/snapshots/<rev>/, refs/main naming the revision.
    repo = tmp_path / "hf" / "hub" / "models--someorg--tiny-bert"
    for rev in ("aaa", "bbb"):
        (repo / "snapshots" / rev).mkdir(parents=True)
        (repo / "snapshots" / rev / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaa\n")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert hub.resolve("someorg/tiny-bert") == repo / "snapshots" / "aaa"


def test_a_run_folder_resolves_to_its_best_then_last_export(tmp_path):
    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    (run / "last" / "config.json").write_text("{}")
    assert hub.resolve(run) == run / "last"
    (run / "best").mkdir()
    (run / "best" / "config.json").write_text("{}")
    assert hub.resolve(run) == run / "best"


def test_google_tensorflow_folders_count_as_checkpoints(tmp_path):
    (tmp_path / "bert_config.json").write_text("{}")
    assert hub.resolve(tmp_path) == tmp_path


def test_not_found_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="bertkit never downloads"):
        hub.resolve("nobody/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hub.resolve(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        hub.resolve(tmp_path / "file.txt")


def test_importing_hub_loads_no_torch():
    code = "import sys, bertkit.hub, bertkit.io; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
