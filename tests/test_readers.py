"""Readers: files -> examples; bad input is one error naming file and line, never silent."""

from __future__ import annotations

import json

import pytest

from bertkit.tasks import readers
from bertkit.tasks.datasets import NER_TAGS
from conftest import data_path, write_file


def test_imdb_reader_on_real_rows(tmp_path):
    # The first rows of the real file (the whole 34 MB file would cost seconds per run).
    with open(data_path("imdb", "test.jsonl"), encoding="utf-8") as f:
        head = [next(f) for _ in range(3)]
    examples = readers.read_jsonl(write_file(tmp_path, "imdb.jsonl", "".join(head)), labels=("0", "1"))
    assert [ex.label for ex in examples] == [1, 1, 1]  # README: positive reviews first
    assert examples[0].text.startswith("I went and saw this movie last night")


def test_mrpc_byte_order_mark_is_not_part_of_the_header():
    path = data_path("glue", "MRPC", "dev.tsv")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    examples = readers.read_table(path, text_column="#1 String", text_pair_column="#2 String",
                                  label_column="Quality", labels=("0", "1"))
    assert len(examples) == 408


def test_bad_label_names_file_and_line(tmp_path):
    p = write_file(tmp_path, "train.tsv", "sentence\tlabel\ngood film\t1\nbad film\t7\n")
    with pytest.raises(ValueError, match=r"train.tsv:3: label '7' is not one of \['0', '1'\]"):
        readers.read_table(p, text_column="sentence", label_column="label", labels=("0", "1"))


def test_empty_label_cell_is_an_error_not_a_class(tmp_path):
    p = write_file(tmp_path, "train.csv", "text,label\ngood,pos\nmeh,\nbad,neg\n")
    with pytest.raises(ValueError, match=r"train.csv:3: empty label"):
        readers.read_table(p, text_column="text", label_column="label", labels=readers.RAW)
    with pytest.raises(ValueError, match=r"train.csv:3: empty label"):
        readers.read_table(p, text_column="text", label_column="label", labels=("neg", "pos"))
    p = write_file(tmp_path, "scores.tsv", "text\tscore\na\t1.5\nb\t \n")
    with pytest.raises(ValueError, match=r"scores.tsv:3: empty label"):
        readers.read_table(p, text_column="text", label_column="score", labels=None)


def test_missing_column_and_short_row(tmp_path):
    p = write_file(tmp_path, "d.tsv", "sentence\tlabel\ngood\t1\n")
    with pytest.raises(ValueError, match=r"d.tsv:1: no column 'text'"):
        readers.read_table(p, text_column="text", label_column="label", labels=("0", "1"))
    p = write_file(tmp_path, "e.tsv", "sentence\tlabel\ngood\t1\nno label here\n")
    with pytest.raises(ValueError, match=r"e.tsv:3: expected at least 2 columns, found 1"):
        readers.read_table(p, text_column="sentence", label_column="label", labels=("0", "1"))


def test_quoted_csv_cell_over_two_lines_keeps_line_numbers(tmp_path):
    p = write_file(tmp_path, "q.csv", 'text,label\n"two\nlines",a\nok,b\nbad,c\n')
    with pytest.raises(ValueError, match=r"q.csv:5: label 'c' is not one of"):
        readers.read_table(p, text_column="text", label_column="label", labels=("a", "b"))
    first, second = readers.read_table(p, text_column="text", label_column="label", labels=readers.RAW)[:2]
    assert first.text == "two\nlines" and second.text == "ok"


def test_empty_files(tmp_path):
    with pytest.raises(ValueError, match="empty file"):
        readers.read_table(write_file(tmp_path, "a.tsv", ""), text_column=0)
    with pytest.raises(ValueError, match="empty file"):
        readers.read_table(write_file(tmp_path, "b.tsv", "sentence\tlabel\n"), text_column="sentence")
    with pytest.raises(ValueError, match="empty file"):
        readers.read_jsonl(write_file(tmp_path, "c.jsonl", "\n"))
    with pytest.raises(ValueError, match="no sentences"):
        readers.read_conll(write_file(tmp_path, "d.txt", "-DOCSTART- -X- -X- O\n\n"))
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        readers.read_table(tmp_path / "nope.tsv", text_column=0)


def test_jsonl_and_csv_user_files(tmp_path):
    p = write_file(tmp_path, "x.jsonl", '{"q": "a", "s": "b", "y": "yes"}\n{"q": "c", "s": "d"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: missing field 'y'"):
        readers.read_jsonl(p, text_column="q", text_pair_column="s", label_column="y", labels=("no", "yes"))
    p = write_file(tmp_path, "x.csv", 'text,score\n"hello, world",2.5\n')
    (ex,) = readers.read_table(p, text_column="text", label_column="score", labels=None)
    assert ex.text == "hello, world" and ex.label == 2.5
    p = write_file(tmp_path, "bad.jsonl", '{"text": "a", "label": 0}\n{"text": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        readers.read_jsonl(p, labels=("0", "1"))
    p = write_file(tmp_path, "types.jsonl", '{"text": "a", "label": 0}\n{"text": ["a"], "label": 1}\n')
    with pytest.raises(ValueError, match=r"types.jsonl:2: no string field 'text'"):
        readers.read_jsonl(p, labels=("0", "1"))
    p = write_file(tmp_path, "null.jsonl", '{"text": "a", "label": null}\n')
    with pytest.raises(ValueError, match=r"null.jsonl:1: label None is not a string or a number"):
        readers.read_jsonl(p, labels=("0", "1"))


@pytest.mark.parametrize("name,read", [
    ("t.tsv", lambda p: readers.read_table(p, text_column="sentence", label_column="label", labels=("0", "1"))),
    ("t.jsonl", lambda p: readers.read_jsonl(p, labels=("0", "1"))),
    ("t.txt", lambda p: readers.read_conll(p)),
    ("t.json", lambda p: readers.read_squad(p)),
])
def test_invalid_utf8_names_file_and_line(tmp_path, name, read):
    good = {"t.tsv": "sentence\tlabel\nfine\t1\n", "t.jsonl": '{"text": "fine", "label": 1}\n',
            "t.txt": "EU NNP I-NP I-ORG\n", "t.json": '{"data": [\n'}[name]
    p = tmp_path / name
    p.write_bytes(good.encode() + b"caf\xe9 \xff\n")
    line = good.count("\n") + 1
    with pytest.raises(ValueError, match=rf"{name}:{line}: not valid UTF-8 \(byte 0xe9"):
        read(p)


def test_conll_bad_tag(tmp_path):
    p = write_file(tmp_path, "t.txt", "EU NNP I-NP I-ORG\nrejects VBZ I-VP I-VERB\n")
    with pytest.raises(ValueError, match=r"t.txt:2: tag 'I-VERB'"):
        readers.read_conll(p, tags=NER_TAGS)


def test_token_example_from_raw_text_keeps_character_spans():
    text = "  Angela Merkel\tvisited  Paris, France.\n"
    ex = readers.TokenExample.from_text(text)
    assert ex.words == ["Angela", "Merkel", "visited", "Paris,", "France."]
    assert [text[a:b] for a, b in ex.spans] == ex.words
    pre = readers.TokenExample(["EU", "rejects", "German"])  # read pre-split: the words joined by spaces
    assert pre.text == "EU rejects German" and [pre.text[a:b] for a, b in pre.spans] == pre.words


def test_squad_mismatched_answer_is_counted_not_silent(tmp_path):
    data = {"data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "2", "question": "What?", "answers": [{"text": "Paris", "answer_start": 3}]},
        {"id": "3", "question": "Who?", "answers": [{"text": "Paris", "answer_start": 5},
                                                   {"text": "Paris", "answer_start": 0}]},
    ]}]}]}
    p = write_file(tmp_path, "s.json", json.dumps(data))
    skipped = readers.Skipped()
    (_, exs), = readers.read_squad(p, skipped)
    assert [e.qid for e in exs] == ["1", "3"]
    assert exs[1].answer_start == 0
    assert skipped.counts == {"answers not found at their answer_start": 2,
                              "questions without a usable answer": 1}


def test_squad_structure_errors_name_the_file(tmp_path):
    p = write_file(tmp_path, "s.json", json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "x"}]}]}))
    with pytest.raises(ValueError, match=r"s.json: not a SQuAD v1.1 file \(an entry has no 'qas' field\)"):
        readers.read_squad(p)
    p = write_file(tmp_path, "b.json", '{"data": [1,\n 2,,]}')
    with pytest.raises(ValueError, match=r"b.json:2: invalid JSON"):
        readers.read_squad(p)
