"""Fine-tuning tasks: readers on the real files, bad input, features, QA decoding, one real fine-tune."""

from __future__ import annotations

import json

import pytest
import torch

from bertkit.tasks import readers
from bertkit.tasks.datasets import NER_TAGS, TASKS
from bertkit.tasks.metrics import entities
from conftest import DATA_DIR, data_path

# --- readers on the real files: counts from the data READMEs ---

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
    if TASKS[task].kind == "regression":
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


def test_imdb_reader_on_real_rows(tmp_path):
    # The first rows of the real file (the whole 34 MB file would cost seconds per run).
    with open(data_path("imdb", "test.jsonl"), encoding="utf-8") as f:
        head = [next(f) for _ in range(3)]
    examples = readers.read_jsonl(_write(tmp_path, "imdb.jsonl", "".join(head)), labels=("0", "1"))
    assert [ex.label for ex in examples] == [1, 1, 1]  # README: positive reviews first
    assert examples[0].text.startswith("I went and saw this movie last night")


# --- bad input: one clear error naming file and line ---

def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_bad_label_names_file_and_line(tmp_path):
    p = _write(tmp_path, "train.tsv", "sentence\tlabel\ngood film\t1\nbad film\t7\n")
    with pytest.raises(ValueError, match=r"train.tsv:3: label '7' is not one of \['0', '1'\]"):
        readers.read_table(p, text_column="sentence", label_column="label", labels=("0", "1"))


def test_missing_column_and_short_row(tmp_path):
    p = _write(tmp_path, "d.tsv", "sentence\tlabel\ngood\t1\n")
    with pytest.raises(ValueError, match=r"d.tsv:1: no column 'text'"):
        readers.read_table(p, text_column="text", label_column="label", labels=("0", "1"))
    p = _write(tmp_path, "e.tsv", "sentence\tlabel\ngood\t1\nno label here\n")
    with pytest.raises(ValueError, match=r"e.tsv:3: expected at least 2 columns, found 1"):
        readers.read_table(p, text_column="sentence", label_column="label", labels=("0", "1"))


def test_empty_files(tmp_path):
    with pytest.raises(ValueError, match="empty file"):
        readers.read_table(_write(tmp_path, "a.tsv", ""), text_column=0)
    with pytest.raises(ValueError, match="empty file"):
        readers.read_table(_write(tmp_path, "b.tsv", "sentence\tlabel\n"), text_column="sentence")
    with pytest.raises(ValueError, match="empty file"):
        readers.read_jsonl(_write(tmp_path, "c.jsonl", "\n"))
    with pytest.raises(ValueError, match="no sentences"):
        readers.read_conll(_write(tmp_path, "d.txt", "-DOCSTART- -X- -X- O\n\n"))
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        readers.read_table(tmp_path / "nope.tsv", text_column=0)


def test_jsonl_and_csv_user_files(tmp_path):
    p = _write(tmp_path, "x.jsonl", '{"q": "a", "s": "b", "y": "yes"}\n{"q": "c", "s": "d"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: missing field 'y'"):
        readers.read_jsonl(p, text_column="q", text_pair_column="s", label_column="y", labels=("no", "yes"))
    p = _write(tmp_path, "x.csv", 'text,score\n"hello, world",2.5\n')
    (ex,) = readers.read_table(p, text_column="text", label_column="score", labels=None)
    assert ex.text == "hello, world" and ex.label == 2.5
    p = _write(tmp_path, "bad.jsonl", '{"text": "a", "label": 0}\n{"text": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        readers.read_jsonl(p, labels=("0", "1"))


def test_conll_bad_tag(tmp_path):
    p = _write(tmp_path, "t.txt", "EU NNP I-NP I-ORG\nrejects VBZ I-VP I-VERB\n")
    with pytest.raises(ValueError, match=r"t.txt:2: tag 'I-VERB'"):
        readers.read_conll(p, tags=NER_TAGS)


def test_squad_mismatched_answer_is_counted_not_silent(tmp_path):
    data = {"data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "2", "question": "What?", "answers": [{"text": "Paris", "answer_start": 3}]},
        {"id": "3", "question": "Who?", "answers": [{"text": "Paris", "answer_start": 5},
                                                   {"text": "Paris", "answer_start": 0}]},
    ]}]}]}
    p = _write(tmp_path, "s.json", json.dumps(data))
    skipped = readers.Skipped()
    (_, exs), = readers.read_squad(p, skipped)
    assert [e.qid for e in exs] == ["1", "3"]
    assert exs[1].answer_start == 0
    assert skipped.counts == {"answers not found at their answer_start": 2,
                              "questions without a usable answer": 1}


# --- features: parity with Hugging Face's tokenizer on real inputs ---

@pytest.fixture(scope="module")
def tok(minilm):
    from bertkit.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(minilm)


@pytest.fixture(scope="module")
def hf_tok(minilm):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast.from_pretrained(str(minilm))


def test_pair_features_match_hf_longest_first(tok, hf_tok):
    from bertkit.tasks.features import text_features

    data_path("glue", "RTE")
    examples = TASKS["rte"].examples("dev", DATA_DIR)
    features = text_features(examples, tok, max_length=64)  # 64: many RTE pairs need truncating
    assert sum(len(f["input_ids"]) == 64 for f in features) > 50
    for ex, f in zip(examples, features):
        ref = hf_tok(ex.text, ex.text_pair, truncation="longest_first", max_length=64)
        assert f["input_ids"] == ref["input_ids"]
        assert f["token_type_ids"] == ref["token_type_ids"]
        assert f["labels"] == ex.label


def test_head_tail_truncation_keeps_both_ends(tok, hf_tok, tmp_path):
    from bertkit.tasks.features import text_features

    with open(data_path("imdb", "test.jsonl"), encoding="utf-8") as f:
        rows = [next(f) for _ in range(40)]
    examples = readers.read_jsonl(_write(tmp_path, "i.jsonl", "".join(rows)), labels=("0", "1"))
    features = text_features(examples, tok, max_length=512, head_tail=(128, 382))
    long = 0
    for ex, f in zip(examples, features):
        full = hf_tok(ex.text)["input_ids"]
        if len(full) <= 512:
            assert f["input_ids"] == full
            continue
        long += 1
        assert len(f["input_ids"]) == 512
        assert f["input_ids"][:129] == full[:129]  # [CLS] + first 128 pieces
        assert f["input_ids"][129:] == full[-383:]  # last 382 pieces + [SEP]
    assert long > 0


def test_ner_labels_on_first_subtoken_like_hf_word_ids(tok, hf_tok):
    from bertkit.tasks.features import token_features, word_tags

    data_path("conll2003")
    examples = TASKS["conll2003"].examples("test", DATA_DIR)[:300]
    features, starts, truncated = token_features(examples, tok, NER_TAGS, TASKS["conll2003"].max_length)
    assert truncated == 0
    for ex, f, st in zip(examples, features, starts):
        ref = hf_tok(ex.words, is_split_into_words=True)
        assert f["input_ids"] == ref["input_ids"]
        word_ids = ref.word_ids()
        firsts = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
        assert st == firsts
        expected = [-100] * len(word_ids)
        for i in firsts:
            expected[i] = NER_TAGS.index(ex.tags[word_ids[i]])
        assert f["labels"] == expected
        # Perfect per-position predictions map back to the gold word tags.
        pred = [max(lab, 0) for lab in f["labels"]]
        assert word_tags(pred, st, len(ex.words), NER_TAGS) == ex.tags


def test_ner_truncation_is_counted(tok):
    from bertkit.tasks.features import token_features, word_tags

    ex = readers.TokenExample(["word"] * 20, ["O"] * 20)
    features, starts, truncated = token_features([ex], tok, NER_TAGS, max_length=12)
    assert len(features[0]["input_ids"]) == 12 and truncated == 10
    assert word_tags([0] * 12, starts[0], 20, NER_TAGS) == ["O"] * 20


# --- QA: window labels and n-best decoding round-trip on real SQuAD questions ---

@pytest.mark.parametrize("max_length,stride", [(384, 128), (96, 32)])
def test_qa_gold_spans_decode_to_gold_answers(tok, max_length, stride):
    import numpy as np

    from bertkit.tasks.metrics import squad_scores
    from bertkit.tasks.qa import best_spans, qa_features

    data_path("squad_v1.1")
    examples = TASKS["squad"].examples("dev", DATA_DIR)[:400]
    features, windows = qa_features(examples, tok, max_length=max_length, doc_stride=stride)
    assert all(len(f["input_ids"]) <= max_length for f in features)
    if max_length == 96:
        assert len(features) > 2 * len(examples)  # really windowed
    found = set()
    starts, ends = [], []
    for f, w in zip(features, windows):
        s, e = f["start_positions"], f["end_positions"]
        ex = examples[w.example]
        if (s, e) != (0, 0):
            found.add(w.example)
            # The labelled pieces cover the answer and nothing outside its first/last piece.
            text = ex.context[w.offsets[s][0]:w.offsets[e][1]]
            assert ex.answer_text in text, (ex.answer_text, text)
        # Logits that point at the labels; windows without the answer point at [CLS].
        sl, el = np.full(len(f["input_ids"]), -10.0), np.full(len(f["input_ids"]), -10.0)
        sl[s], el[e] = 10.0, 10.0
        starts.append(sl)
        ends.append(el)
    assert len(found) >= 0.99 * len(examples)
    spans = best_spans(examples, windows, starts, ends)
    exact = np.mean([p["answer"] == ex.answer_text for p, ex in zip(spans, examples)])
    assert exact >= 0.97  # misses: answers that end inside a word piece ("1960s" vs "1960")
    scores = squad_scores({ex.qid: p["answer"] for ex, p in zip(examples, spans)},
                          {ex.qid: ex.answers for ex in examples})
    assert scores["f1"] > 98.0
    for p, ex in zip(spans, examples):
        assert ex.context[p["start"]:p["end"]] == p["answer"]


def test_qa_span_labels_point_at_cls_outside_window():
    from bertkit.tasks.qa import span_labels

    offsets = [None, None, None, (0, 5), (6, 10), (10, 11), None]  # [CLS] q [SEP] ctx... [SEP]
    assert span_labels(offsets, 6, 11) == (4, 5)
    assert span_labels(offsets, 7, 9) == (4, 4)  # inside one piece
    assert span_labels(offsets, 20, 25) == (0, 0)  # after the window
    assert span_labels(offsets, 8, 25) == (0, 0)  # only partly inside


# --- user files: label set learnt from the train file ---

def test_custom_task_learns_label_set(tmp_path):
    from bertkit.tasks.finetune import custom_task

    train = _write(tmp_path, "train.csv", "q,a,y\nhi,there,yes\nbye,now,no\nok,fine,yes\n")
    dev = _write(tmp_path, "dev.csv", "q,a,y\nhm,hm,maybe\n")
    task = custom_task(train, dev, text_column="q", text_pair_column="a", label_column="y")
    assert task.labels == ("no", "yes")
    assert [(ex.text_pair, ex.label) for ex in task.examples("train")] == [("there", 1), ("now", 0), ("fine", 1)]
    with pytest.raises(ValueError, match=r"dev.csv:2: label 'maybe' is not one of \['no', 'yes'\]"):
        task.examples("dev")


def test_cli_rejects_unknown_task_in_one_line(capsys, minilm, tmp_path):
    from bertkit.cli import main

    assert main(["finetune", "--task", "nope", "--model", str(minilm), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown task 'nope'" in err


# --- one real fine-tune through the engine, then evaluate / predict / the CLI on its output ---

@pytest.fixture(scope="module")
def sst2_model(minilm, tmp_path_factory):
    from bertkit.tasks.finetune import finetune

    data_path("glue", "SST-2")
    out = tmp_path_factory.mktemp("sst2")
    # 25 steps of 8: a high lr (3e-4) is what moves MiniLM off the majority class this fast.
    summary = finetune("sst2", minilm, out, epochs=1, lr=3e-4, batch_size=8, max_train_examples=200,
                       max_eval_examples=200, max_length=48, data_dir=DATA_DIR, progress=False)
    return out, summary


def test_tiny_sst2_finetune_beats_chance(sst2_model):
    out, s = sst2_model
    (epoch,) = s["epochs"]
    assert s["best"] == epoch["val_accuracy"] > 0.6  # 200 dev examples, majority class 0.535
    assert {"train_loss", "train_accuracy", "val_loss", "epoch_seconds"} <= set(epoch)
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["finetuning_task"] == "sst2" and (out / "best" / "vocab.txt").exists()
    assert json.loads((out / "finetune.json").read_text())["best"] == s["best"]


def test_evaluate_reloads_the_best_model(sst2_model):
    from bertkit.tasks.finetune import evaluate

    out, s = sst2_model
    scores = evaluate(out, max_examples=200, data_dir=DATA_DIR)  # same seeded subset as validation
    assert scores["accuracy"] == pytest.approx(s["best"])


def test_predict_and_cli_on_the_fine_tuned_model(sst2_model, capsys, tmp_path):
    from bertkit.cli import main
    from bertkit.tasks.finetune import evaluate, predict

    out, _ = sst2_model
    results = predict(out, ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate ."])
    assert [r["label"] for r in results] == ["positive", "negative"]
    assert all(abs(sum(r["scores"].values()) - 1) < 1e-5 and r["score"] >= 0.5 for r in results)
    assert main(["predict", str(out), "--text", "a gorgeous , witty , seductive movie ."]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == "positive"
    # A user's own labelled file, scored with the model's label names.
    dev = _write(tmp_path, "mine.tsv", "text\tlabel\na gorgeous , witty movie .\tpositive\nboilerplate .\tnegative\n")
    assert evaluate(out, "custom", dev_file=dev)["accuracy"] == 1.0


def test_freeze_encoder_trains_only_the_head(minilm, tmp_path):
    from safetensors.torch import load_file

    from bertkit.tasks.finetune import finetune

    data_path("glue", "SST-2")
    finetune("sst2", minilm, tmp_path, epochs=1, lr=1e-3, batch_size=8, max_train_examples=16,
             max_eval_examples=8, max_length=32, freeze_encoder=True, data_dir=DATA_DIR, progress=False)
    before, after = load_file(minilm / "model.safetensors"), load_file(tmp_path / "best" / "model.safetensors")
    compared = 0
    for name, tensor in before.items():
        hf_name = name if name.startswith("bert.") else f"bert.{name}"
        if hf_name in after:
            if ".pooler." in hf_name:  # trained with the head
                assert not torch.equal(after[hf_name], tensor), name
            else:
                assert torch.equal(after[hf_name], tensor), name
            compared += 1
    assert compared >= 100  # every encoder weight (MiniLM has 103 tensors with the pooler)
    assert after["classifier.weight"].shape == (2, 384)
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    assert config["hidden_dropout_prob"] == 0.0 and config["classifier_dropout"] == 0.1
