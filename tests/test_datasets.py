"""The built-in tasks on the real files (counts from the data READMEs), and tasks over user files."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertkit.tasks import readers
from bertkit.tasks.datasets import NER_TAGS, TASKS, get_task, user_task
from bertkit.tasks.metrics import entities
from conftest import DATA_DIR, data_path, write_file


@pytest.mark.parametrize("task,split,count,first", [
    ("sst2", "dev", 872, "it 's a charming and often affecting journey ."),
    ("cola", "dev", 1043, "The sailors rode the breeze clear of the rocks."),
    ("rte", "dev", 277, None),
    ("mrpc", "dev", 408, None),
    ("stsb", "dev", 1500, "A man with a hard hat is dancing."),
    ("qnli", "dev", 1093, None),
    ("qnli", "train", 4370, None),
])
def test_glue_readers_on_real_files(task, split, count, first):
    data_path("glue")
    examples = TASKS[task].examples(split, DATA_DIR)
    assert len(examples) == count
    if first is not None:
        assert examples[0].text == first
    labels = [ex.label for ex in examples]
    if TASKS[task].kind.name == "regression":
        assert min(labels) == 0.0 and max(labels) == 5.0 and examples[0].label == 5.0
    else:
        assert set(labels) == {0, 1}
    assert all((ex.text_pair is None) == (task in ("sst2", "cola")) for ex in examples)


def test_every_built_in_split_reads_with_readme_counts():
    data_path("glue")
    counts = {("sst2", "train"): 67349, ("cola", "train"): 8551, ("rte", "train"): 2490, ("mrpc", "train"): 3668,
              ("stsb", "train"): 5749, ("imdb", "train"): 25000, ("imdb", "dev"): 25000,
              ("conll2003", "train"): 14041, ("conll2003", "dev"): 3250}
    for (task, split), n in counts.items():
        assert len(TASKS[task].examples(split, DATA_DIR)) == n, (task, split)


def test_label_counts_match_readme():
    data_path("glue")
    rte = TASKS["rte"].examples("dev", DATA_DIR)
    assert sum(ex.label == 0 for ex in rte) == 146  # entailment
    mrpc = TASKS["mrpc"].examples("dev", DATA_DIR)
    assert sum(ex.label for ex in mrpc) == 279
    assert mrpc[0].text.startswith("He said the foodservice pie business")  # BOM-prefixed header read
    sst = TASKS["sst2"].examples("dev", DATA_DIR)
    assert sum(ex.label for ex in sst) == 444


def test_conll_reader_real_file():
    data_path("conll2003")
    sentences = TASKS["conll2003"].examples("test", DATA_DIR)
    assert len(sentences) == 3453  # README: sentences excluding -DOCSTART-
    assert sum(len(s.words) for s in sentences) == 46435
    assert sentences[0].words[:3] == ["SOCCER", "-", "JAPAN"]
    # IOB1 in the file, IOB2 after reading; the entities are the same.
    assert sentences[0].tags[2] == "B-LOC"
    raw = readers.read_conll(data_path("conll2003", "eng.testb.txt"))
    assert raw[0].tags[2] == "I-LOC"
    assert [entities(r.tags) for r in raw] == [entities(s.tags) for s in sentences]
    assert all(t in NER_TAGS for s in sentences for t in s.tags)


def test_squad_reader_and_article_split():
    path = data_path("squad_v1.1", "dev-v1.1.json")
    skipped = readers.Skipped()
    articles = readers.read_squad(path, skipped)
    assert len(articles) == 48 and articles[0][0] == "Super_Bowl_50"
    assert sum(len(exs) for _, exs in articles) == 10570
    assert not skipped  # README: every answer matches its context
    train, dev = TASKS["squad"].examples("train", DATA_DIR), TASKS["squad"].examples("dev", DATA_DIR)
    assert len(train) + len(dev) == 10570
    assert not {ex.context for ex in train} & {ex.context for ex in dev}  # no shared paragraph


def test_task_table_is_consistent():
    for name, task in TASKS.items():
        assert task.name == name and get_task(name.upper()) is task
        assert task.metric in {"accuracy", "f1", "mcc", "spearman"}
        assert set(task.files) >= {"train", "dev"}
        assert (task.recipe.doc_stride is not None) == (task.kind.name == "qa")  # windows are QA's alone
    assert get_task("SST-2") is TASKS["sst2"]
    with pytest.raises(ValueError, match=r"unknown task 'nope'; choose from sst2, cola"):
        get_task("nope")
    with pytest.raises(ValueError, match=r"task sst2 has no 'test' split \(has dev, train\)"):
        TASKS["sst2"].examples("test", DATA_DIR)


def test_user_task_learns_label_set(tmp_path):
    train = write_file(tmp_path, "train.csv", "q,a,y\nhi,there,yes\nbye,now,no\nok,fine,yes\n")
    dev = write_file(tmp_path, "dev.csv", "q,a,y\nhm,hm,maybe\n")
    task = user_task(train, dev, text_column="q", text_pair_column="a", label_column="y")
    assert task.labels == ("no", "yes") and task.kind.name == "classification"
    assert [(ex.text_pair, ex.label) for ex in task.examples("train")] == [("there", 1), ("now", 0), ("fine", 1)]
    with pytest.raises(ValueError, match=r"dev.csv:2: label 'maybe' is not one of \['no', 'yes'\]"):
        task.examples("dev")
    scores = user_task(write_file(tmp_path, "s.jsonl", '{"text": "a", "label": 0.5}\n'), regression=True)
    assert scores.kind.name == "regression" and scores.labels is None and scores.metric == "spearman"
    assert scores.examples("train")[0].label == 0.5


def test_data_directory_is_found_beside_the_working_directory(tmp_path, monkeypatch):
    from bertkit.tasks.datasets import resolve_data_dir

    monkeypatch.delenv("BERTKIT_DATA", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(ValueError, match="no data directory: pass --data-dir or set BERTKIT_DATA"):
        resolve_data_dir(None)
    (tmp_path / "shared" / "data" / "imdb").mkdir(parents=True)
    assert resolve_data_dir(None) == Path("../shared/data")
    (tmp_path / "work" / "data" / "glue").mkdir(parents=True)
    assert resolve_data_dir(None) == Path("data")  # ./data first
    monkeypatch.setenv("BERTKIT_DATA", str(tmp_path / "shared" / "data"))
    assert resolve_data_dir(None) == tmp_path / "shared" / "data"  # the variable wins
    assert resolve_data_dir(tmp_path / "work" / "data") == tmp_path / "work" / "data"  # the flag wins over all
