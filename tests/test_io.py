"""bertkit.io: atomic writes of files and folders, recovery after a crash, readers with file:line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bertkit import io


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.json"
    io.write_json(path, {"x": 1})
    with pytest.raises(RuntimeError):
        io.atomic_write(path, lambda p: (p.write_text("half"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert json.loads(path.read_text()) == {"x": 1}  # the old version survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # and no temp file is left


def test_strict_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        io.write_json(tmp_path / "m.json", {"loss": float("nan")})


def test_atomic_dir_swaps_a_folder_and_recover_dir_undoes_a_half_swap(tmp_path):
    target = tmp_path / "last"
    with io.atomic_dir(target) as tmp:
        (tmp / "f").write_text("1")
    with io.atomic_dir(target) as tmp:
        (tmp / "f").write_text("2")
    assert (target / "f").read_text() == "2"
    # A crash between the two renames: the old folder is aside, the new one not yet in place.
    old = tmp_path / f".last{io.OLD_MARK}999"
    os.replace(target, old)
    assert not target.exists()
    io.recover_dir(target)
    assert (target / "f").read_text() == "2" and not old.exists()


def test_a_killed_writer_leaves_a_temp_that_remove_stale_temps_finds(tmp_path):
    script = (f"import os, signal; from pathlib import Path; from bertkit import io\n"
              f"io.atomic_write(Path({str(tmp_path / 'state.pt')!r}), "
              f"lambda p: (p.write_bytes(b'x' * 1000), os.kill(os.getpid(), signal.SIGKILL)))")
    subprocess.run([sys.executable, "-c", script], check=False)
    stale = [p for p in tmp_path.iterdir() if io.TMP_MARK in p.name]
    assert stale and not (tmp_path / "state.pt").exists()
    assert io.remove_stale_temps(tmp_path) == stale
    assert list(tmp_path.iterdir()) == []


def test_readers_name_file_and_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbffirst\r\n\nthird \xff\n")
    lines = io.read_lines(path)
    assert next(lines) == (1, "first")  # byte-order mark and CRLF gone
    assert next(lines) == (2, "")
    with pytest.raises(ValueError, match=r"t\.txt:3: not valid UTF-8 \(byte 0xff"):
        next(lines)
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"text": "a"}\n\n{"text": 2}\n')
    texts = io.read_texts(jl, keep_blank=False)
    assert next(texts) == "a"
    with pytest.raises(ValueError, match=r"t\.jsonl:3: no string field 'text'"):
        next(texts)
    jl.write_text('{"text": "a"}\n[1]\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:2: expected a JSON object"):
        list(io.read_jsonl(jl))


def test_read_texts_keeps_or_skips_blank_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a\n\nb\n")
    assert list(io.read_texts(path, keep_blank=True)) == ["a", "", "b"]
    assert list(io.read_texts(path, keep_blank=False)) == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(io.read_texts(tmp_path / "missing.txt", keep_blank=True))


def test_chunked_streams():
    assert list(io.chunked(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(io.chunked([], 3)) == []


def test_expand_paths_keeps_order_sorts_glob_matches_and_names_what_is_missing(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.txt", "sub/d.jsonl"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x\n")
    got = io.expand_paths([str(tmp_path / "b.txt"), str(tmp_path / "*.txt"), "-", str(tmp_path / "**" / "*.jsonl")])
    assert got == [str(tmp_path / n) for n in ("b.txt", "a.txt", "b.txt")] + ["-", str(tmp_path / "sub" / "d.jsonl")]
    assert io.expand_paths(tmp_path / "a.txt") == [str(tmp_path / "a.txt")]
    with pytest.raises(FileNotFoundError, match=r"\*\.csv: no file matches"):
        io.expand_paths([str(tmp_path / "*.csv")])
    with pytest.raises(FileNotFoundError, match="missing.txt: no such file"):
        io.expand_paths([str(tmp_path / "missing.txt")])
    with pytest.raises(IsADirectoryError, match="is a folder"):
        io.expand_paths([str(tmp_path / "sub")])


def test_numbered_texts_give_the_line_of_each_text(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "body": "c"}\n\n{"text": "b", "body": "d"}\n')
    assert list(io.numbered_texts(path, keep_blank=True)) == [(1, "a"), (3, "b")]
    assert list(io.numbered_texts(path, keep_blank=True, text_field="body")) == [(1, "c"), (3, "d")]
    txt = tmp_path / "t.txt"
    txt.write_text("a\n\nb\n")
    assert list(io.numbered_texts(txt, keep_blank=False)) == [(1, "a"), (3, "b")]


@pytest.mark.parametrize("n", [0, 1, 7, 100])
def test_shards_are_disjoint_and_together_complete(n):
    parts = [list(io.shard(iter(range(n)), i, 3)) for i in range(3)]
    assert sorted(x for p in parts for x in p) == list(range(n))
    whole = [None] * n
    for i, p in enumerate(parts):
        whole[i::3] = p  # part i interleaves back
    assert whole == list(range(n))
    with pytest.raises(ValueError, match="shard 3/3"):
        io.shard([], 3, 3)
