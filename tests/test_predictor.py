"""Predictor: load once, predict many; inputs checked; outputs in input order, as the model computes them."""

from __future__ import annotations

import pytest
import torch

from bertkit import Predictor, predict
from bertkit.config import BertConfig
from bertkit.heads import BertForQuestionAnswering, BertForTokenClassification
from bertkit.tasks.datasets import NER_TAGS, TASKS
from bertkit.tasks.kinds import QuestionAnswering, TokenClassification
from conftest import DATA_DIR, data_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sst2(sst2_run):
    return Predictor.from_pretrained(sst2_run[0])


def test_predictor_knows_its_task_from_the_saved_model(sst2, sst2_run):
    assert (sst2.kind, sst2.labels, sst2.max_length) == ("classification", ("negative", "positive"), 48)
    assert Predictor.from_pretrained(sst2_run[0] / "best").labels == sst2.labels  # the run folder is its best/
    results = sst2(["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate ."])
    assert [r["label"] for r in results] == ["positive", "negative"]
    assert all(abs(sum(r["scores"].values()) - 1) < 1e-5 and r["score"] == max(r["scores"].values())
               for r in results)
    (again,) = predict(sst2_run[0], ["a gorgeous , witty , seductive movie ."])  # loads the model each call
    assert again["label"] == "positive" and again["score"] == pytest.approx(results[0]["score"], abs=1e-5)


def test_a_bare_string_is_refused_not_split_into_characters(sst2):
    with pytest.raises(TypeError, match="inputs must be a list; wrap one input in a list"):
        sst2("one string")
    with pytest.raises(TypeError, match="inputs must be a list"):
        sst2(("a pair", "as a tuple"))
    with pytest.raises(TypeError, match=r"input 1: expected a text or a \(text, text pair\), got NoneType"):
        sst2(["fine", None])


def test_batched_outputs_come_back_in_input_order(sst2, hf_tok):
    data_path("glue", "SST-2")
    examples = TASKS["sst2"].examples("dev", DATA_DIR)[:40]
    inputs = [ex.text for ex in examples[:30]] + [(ex.text, ex.text) for ex in examples[30:]]  # pairs too
    prepared = sst2.prepare(inputs)
    for x, p in zip(inputs, prepared):  # n_tokens: what the model reads, as transformers' tokenizer counts
        ids = hf_tok(*(x if isinstance(x, tuple) else (x,)), truncation=True, max_length=48)["input_ids"]
        assert p.n_tokens == len(ids) and p.features[0]["input_ids"] == ids
    together = sst2.run(prepared, batch_size=7)  # length-sorted batches of mixed lengths
    assert sst2(inputs, batch_size=7) == together
    for x, result in zip(inputs, together):
        (alone,) = sst2([x], batch_size=1)
        assert alone["label"] == result["label"]
        assert alone["score"] == pytest.approx(result["score"], abs=1e-5)


def test_reduced_precision_mostly_agrees(sst2_run, sst2):
    data_path("glue", "SST-2")
    texts = [ex.text for ex in TASKS["sst2"].examples("dev", DATA_DIR)[:60]]
    ref = [r["label"] for r in sst2(texts)]
    for dtype in ("bf16", "int8"):
        labels = [r["label"] for r in Predictor.from_pretrained(sst2_run[0], dtype=dtype)(texts)]
        assert sum(a == b for a, b in zip(labels, ref)) >= 0.9 * len(texts), dtype


def test_models_that_cannot_predict_are_refused(minilm, sst2_run):
    with pytest.raises(ValueError, match=r"architecture 'BertModel' is not a fine-tuned task head"):
        Predictor.from_pretrained(minilm)
    with pytest.raises(ValueError, match=r"max_length must be between 8 and the model's 512 positions, got 600"):
        Predictor.from_pretrained(sst2_run[0], max_length=600)


def _saved(model, path):
    model.config = model.config.replace(extra={**model.config.extra, "finetuning_max_length": 32})
    return model.save_pretrained(path)


def test_entities_are_character_offsets_into_the_raw_text(tiny_bert, tmp_path):
    kind = TokenClassification(NER_TAGS)
    config = BertConfig.from_json(tiny_bert).replace(**kind.config_overrides())
    model = BertForTokenClassification.from_pretrained(tiny_bert, config=config)
    with torch.no_grad():  # a model that tags every word's pieces B-PER, whatever the text
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0 if t == "B-PER" else 0.0 for t in NER_TAGS]))
    predictor = Predictor.from_pretrained(_saved(model, tmp_path / "ner"))
    assert (predictor.kind, predictor.max_length) == ("token", 32)
    text = " Angela  Merkel\tvisited Paris-Nord, today."
    (result,) = predictor([text])
    words = text.split()
    assert result["tags"] == ["B-PER"] * len(words)
    assert [e["text"] for e in result["entities"]] == words
    assert [text[e["start"]:e["end"]] for e in result["entities"]] == words
    assert [e["words"] for e in result["entities"]] == [[i, i + 1] for i in range(len(words))]
    long = predictor([" ".join(["word"] * 40)])[0]  # words past max_length: predicted "O", still one tag each
    assert len(long["tags"]) == 40 and long["tags"][-1] == "O"


def test_answers_are_character_offsets_into_the_context(tiny_bert, tmp_path):
    torch.manual_seed(0)
    model = BertForQuestionAnswering.from_pretrained(tiny_bert)
    predictor = Predictor.from_pretrained(_saved(model, tmp_path / "qa"))
    assert predictor.kind == "qa" and isinstance(predictor.task_kind, QuestionAnswering)
    context = " ".join(f"Sentence number {i} says something about the river Seine in Paris." for i in range(12))
    prepared = predictor.prepare([("Where is the Seine?", context), ("Which number?", "Number seven.")])
    assert len(prepared[0].features) > 3 and len(prepared[1].features) == 1  # windows over the long context
    for ctx, r in zip([context, "Number seven."], predictor.run(prepared)):
        assert r["answer"] == ctx[r["start"]:r["end"]] and 0 <= r["score"] <= 1
    with pytest.raises(TypeError, match=r"input 0: question answering takes \(question, context\) pairs"):
        predictor(["Where is the Seine?"])
