"""Features: parity with Hugging Face's tokenizer on real inputs."""

from __future__ import annotations

from bertkit.tasks import readers
from bertkit.tasks.datasets import NER_TAGS, TASKS
from bertkit.tasks.features import text_features, token_features, word_tags
from conftest import DATA_DIR, data_path, write_file


def test_pair_features_match_hf_longest_first(tok, hf_tok):
    data_path("glue", "RTE")
    examples = TASKS["rte"].examples("dev", DATA_DIR)
    features, cut = text_features(examples, tok, max_length=64)  # 64: many RTE pairs need truncating
    assert sum(len(f["input_ids"]) == 64 for f in features) > 50
    for ex, f, was_cut in zip(examples, features, cut):
        ref = hf_tok(ex.text, ex.text_pair, truncation="longest_first", max_length=64)
        assert was_cut == (len(hf_tok(ex.text, ex.text_pair)["input_ids"]) > 64)
        assert f["input_ids"] == ref["input_ids"]
        assert f["token_type_ids"] == ref["token_type_ids"]
        assert f["labels"] == ex.label


def test_head_tail_truncation_keeps_both_ends(tok, hf_tok, tmp_path):
    with open(data_path("imdb", "test.jsonl"), encoding="utf-8") as f:
        rows = [next(f) for _ in range(40)]
    examples = readers.read_jsonl(write_file(tmp_path, "i.jsonl", "".join(rows)), labels=("0", "1"))
    features, cut = text_features(examples, tok, max_length=512, head_tail=(128, 382))
    long = 0
    for ex, f, was_cut in zip(examples, features, cut):
        full = hf_tok(ex.text)["input_ids"]
        assert was_cut == (len(full) > 512)
        if len(full) <= 512:
            assert f["input_ids"] == full
            continue
        long += 1
        assert len(f["input_ids"]) == 512
        assert f["input_ids"][:129] == full[:129]  # [CLS] + first 128 pieces
        assert f["input_ids"][129:] == full[-383:]  # last 382 pieces + [SEP]
    assert long > 0


def test_ner_labels_on_first_subtoken_like_hf_word_ids(tok, hf_tok):
    data_path("conll2003")
    examples = TASKS["conll2003"].examples("test", DATA_DIR)[:300]
    features, starts, truncated = token_features(examples, tok, NER_TAGS, TASKS["conll2003"].recipe.max_length)
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
    ex = readers.TokenExample(["word"] * 20, ["O"] * 20)
    features, starts, truncated = token_features([ex], tok, NER_TAGS, max_length=12)
    assert len(features[0]["input_ids"]) == 12 and truncated == 10
    assert word_tags([0] * 12, starts[0], 20, NER_TAGS) == ["O"] * 20
