"""Task kinds: features -> outputs -> predictions -> scores for each kind, against reference metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertkit.config import BertConfig
from bertkit.tasks.datasets import NER_TAGS, TASKS
from bertkit.tasks.kinds import (
    Classification,
    QuestionAnswering,
    Regression,
    TokenClassification,
    kind_of,
    softmax,
)
from conftest import DATA_DIR, data_path


def _saved_config(kind, max_length=128, doc_stride=None) -> BertConfig:
    """The config.json a fine-tune of this kind writes, read back."""
    config = BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=16)
    config = config.replace(**kind.config_overrides(), extra={**kind.config_extra(max_length, doc_stride),
                                                              "architectures": [kind.head_name]})
    return BertConfig.from_dict(config.to_dict())


@pytest.mark.parametrize("kind", [Classification(("neg", "pos")), Classification(("a", "b", "c"), head_tail=(1, 3)),
                                  Regression(), TokenClassification(NER_TAGS), QuestionAnswering()])
def test_kind_of_a_saved_config_is_the_kind_that_wrote_it(kind):
    back = kind_of(_saved_config(kind, doc_stride=64))
    assert type(back) is type(kind) and back.labels == kind.labels
    assert getattr(back, "head_tail", None) == getattr(kind, "head_tail", None)
    assert back.head.__name__ == kind.head_name


def test_kind_of_refuses_a_model_without_a_task_head():
    config = BertConfig(extra={"architectures": ["BertModel"]})
    with pytest.raises(ValueError, match=r"m/config.json: architecture 'BertModel' is not a fine-tuned task head"):
        kind_of(config, "m/config.json")


def test_classification_predictions_and_scores_match_sklearn(tok):
    metrics = pytest.importorskip("sklearn.metrics")
    data_path("glue", "SST-2")
    kind = TASKS["sst2"].kind
    examples = TASKS["sst2"].examples("dev", DATA_DIR)[:300]
    prepared = kind.features(examples, tok, 64)
    assert [p.n_tokens for p in prepared] == [len(tok.encode(ex.text, max_length=64).input_ids) for ex in examples]
    logits = np.random.default_rng(0).normal(size=(len(examples), 2)).astype(np.float32)
    preds = kind.predictions([[{"logits": row}] for row in logits], prepared)
    ids = logits.argmax(-1)
    assert [p["label"] for p in preds] == [kind.labels[i] for i in ids]
    for p, row in zip(preds, logits):
        probs = torch.softmax(torch.from_numpy(row).double(), -1).numpy()
        assert p["score"] == pytest.approx(probs.max()) and sum(p["scores"].values()) == pytest.approx(1)
    gold = [ex.label for ex in examples]
    scores = kind.scores(preds, examples)
    assert scores["accuracy"] == pytest.approx(metrics.accuracy_score(gold, ids))
    assert scores["f1"] == pytest.approx(metrics.f1_score(gold, ids))
    assert scores["mcc"] == pytest.approx(metrics.matthews_corrcoef(gold, ids))


def test_regression_scores_match_scipy(tok):
    stats = pytest.importorskip("scipy.stats")
    data_path("glue", "STS-B")
    kind = TASKS["stsb"].kind
    examples = TASKS["stsb"].examples("dev", DATA_DIR)[:200]
    prepared = kind.features(examples, tok, 128)
    values = np.random.default_rng(1).normal(size=len(examples)).astype(np.float32)
    preds = kind.predictions([[{"logits": np.array([v])}] for v in values], prepared)
    assert [p["score"] for p in preds] == [float(v) for v in values]
    gold = [ex.label for ex in examples]
    scores = kind.scores(preds, examples)
    assert scores["pearson"] == pytest.approx(stats.pearsonr(values, gold)[0], abs=1e-6)
    assert scores["spearman"] == pytest.approx(stats.spearmanr(values, gold)[0], abs=1e-6)


def _one_hot_logits(prepared, labels_of):
    """Per feature, logits that put 10 on the gold label of each position (-100: label 0)."""
    out = []
    for p in prepared:
        (f,) = p.features
        logits = np.full((len(f["input_ids"]), len(NER_TAGS)), -10.0, dtype=np.float32)
        logits[np.arange(len(f["input_ids"])), [max(x, 0) for x in labels_of(f)]] = 10.0
        out.append([{"logits": logits}])
    return out


def test_token_kind_gold_logits_give_gold_tags_and_entities_in_the_text(tok):
    seqeval = pytest.importorskip("seqeval.metrics")
    data_path("conll2003")
    kind = TASKS["conll2003"].kind
    examples = TASKS["conll2003"].examples("test", DATA_DIR)[:300]
    prepared = kind.features(examples, tok, 192)
    preds = kind.predictions(_one_hot_logits(prepared, lambda f: f["labels"]), prepared)
    assert [p["tags"] for p in preds] == [ex.tags for ex in examples]
    assert kind.scores(preds, examples)["f1"] == pytest.approx(100 * seqeval.f1_score([ex.tags for ex in examples],
                                                                                       [p["tags"] for p in preds]))
    n = 0
    for p, ex in zip(preds, examples):
        for e in p["entities"]:
            first, stop = e["words"]
            assert e["text"] == ex.text[e["start"]:e["end"]] == " ".join(ex.words[first:stop])
            assert ex.tags[first] == "B-" + e["entity"] and e["score"] > 0.99
            n += 1
    assert n > 300


def test_token_kind_entities_are_character_offsets_into_raw_text(tok):
    kind = TokenClassification(NER_TAGS)
    text = "  Angela Merkel\tmet  Macron in Paris."
    prepared = kind.features(kind.examples([text]), tok, 64)
    starts = prepared[0].positions[0]
    tags = ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC"]
    gold = [-100] * len(prepared[0].features[0]["input_ids"])
    for s, t in zip(starts, tags):
        gold[s] = NER_TAGS.index(t)
    (pred,) = kind.predictions(_one_hot_logits(prepared, lambda f: gold), prepared)
    assert pred["tags"] == tags
    assert [(e["entity"], e["text"], text[e["start"]:e["end"]]) for e in pred["entities"]] == [
        ("PER", "Angela Merkel", "Angela Merkel"), ("PER", "Macron", "Macron"), ("LOC", "Paris.", "Paris.")]


def test_qa_kind_keeps_every_window_of_a_question_together(tok):
    data_path("squad_v1.1")
    kind = TASKS["squad"].kind
    examples = TASKS["squad"].examples("dev", DATA_DIR)[:200]
    prepared = kind.features(examples, tok, 96, doc_stride=32)
    assert len(prepared) == len(examples) and sum(len(p.features) for p in prepared) > 2 * len(examples)
    outputs = []
    for p in prepared:
        assert p.n_tokens == sum(len(f["input_ids"]) for f in p.features) and len(p.positions) == len(p.features)
        outs = []
        for f in p.features:  # logits on the labelled span ([CLS] where the window lacks the answer)
            s, e = (np.full(len(f["input_ids"]), -10.0, dtype=np.float32) for _ in range(2))
            s[f["start_positions"]], e[f["end_positions"]] = 10.0, 10.0
            outs.append({"start_logits": s, "end_logits": e})
        outputs.append(outs)
    preds = kind.predictions(outputs, prepared)
    for p, ex in zip(preds, examples):
        assert ex.context[p["start"]:p["end"]] == p["answer"] and 0 < p["score"] <= 1
    assert kind.scores(preds, examples)["f1"] > 98


def test_train_stats_count_what_they_name():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    stats = Classification(("a", "b")).train_stats({"labels": torch.tensor([0, 0, 0])}, {"logits": logits})
    assert [int(x) for x in stats["accuracy"]] == [2, 3]
    token_logits = torch.tensor([[[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]]])  # predicts 0, 1, 0
    labels = torch.tensor([[0, -100, 1]])
    stats = TokenClassification(("O", "B-X")).train_stats({"labels": labels}, {"logits": token_logits})
    assert [int(x) for x in stats["accuracy"]] == [1, 2]  # the -100 position does not count
    out = {"start_logits": torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]]),
           "end_logits": torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]])}
    batch = {"start_positions": torch.tensor([1, 1]), "end_positions": torch.tensor([2, 2])}
    hit, n = QuestionAnswering().train_stats(batch, out)["span_accuracy"]
    assert (int(hit), int(n)) == (1, 2)
    assert Regression().train_stats({}, {}) == {}


def test_each_kind_takes_its_own_inputs_and_lines():
    text = Classification(("a", "b"))
    assert [(e.text, e.text_pair) for e in text.examples(["x", ("y", "z")])] == [("x", None), ("y", "z")]
    assert text.parse_line("y\tz\tw") == ("y", "z\tw") and text.parse_line("x") == "x"
    with pytest.raises(TypeError, match=r"input 1: expected a text or a \(text, text pair\), got int"):
        text.examples(["x", 3])
    ner = TokenClassification(NER_TAGS)
    assert ner.parse_line("EU\trejects") == "EU\trejects"
    assert ner.examples(["EU\trejects"])[0].words == ["EU", "rejects"]
    with pytest.raises(TypeError, match=r"input 0: token classification takes raw text"):
        ner.examples([("a", "b")])
    qa = QuestionAnswering()
    assert qa.parse_line("who?\tMe.") == ("who?", "Me.")
    with pytest.raises(ValueError, match="question answering needs 'question<TAB>context'"):
        qa.parse_line("who?")
    with pytest.raises(TypeError, match=r"input 0: question answering takes \(question, context\) pairs"):
        qa.examples(["who?"])


def test_softmax_is_stable_for_large_logits():
    p = softmax(np.array([1000.0, 0.0, -1000.0]))
    assert np.isfinite(p).all() and p[0] == pytest.approx(1.0)
