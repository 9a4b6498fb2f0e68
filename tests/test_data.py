"""Pre-training data: sentence splitting, corpus reading and its counts, NSP instances as Google
makes them, shards on disk, and dynamic masking statistics."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from bertkit.batching import collate
from bertkit.data import (
    CorpusStats,
    MaskedBatches,
    Masker,
    MaskingConfig,
    PretrainingData,
    PretrainingParts,
    open_prepared,
    prepare,
    read_documents,
    split_sentences,
)
from bertkit.data.instances import document_instances, truncate_seq_pair
from bertkit.tokenizer import Tokenizer
from conftest import imdb_sample, minilm_dir, small_vocab

# ---------------------------------------------------------------------------- sentences and documents


@pytest.mark.parametrize("text, expected", [
    ("Mr. Smith paid $3.50 for it. Then he left!", ["Mr. Smith paid $3.50 for it.", "Then he left!"]),
    ('"Why?" she asked. He said no.', ['"Why?" she asked.', "He said no."]),
    ("J. R. R. Tolkien served in the U.S. Army. It shows.", ["J. R. R. Tolkien served in the U.S. Army.", "It shows."]),
    ("Use e.g. this one. Version 2.0 is out... Really?! Yes.",
     ["Use e.g. this one.", "Version 2.0 is out...", "Really?!", "Yes."]),
    ("First line<br /><br />second line\nthird", ["First line", "second line", "third"]),
    ("It ends (quietly.) Then it starts.", ["It ends (quietly.)", "Then it starts."]),
    ("   ", []),
])
def test_sentence_splitter(text, expected):
    assert split_sentences(text) == expected


def test_reading_the_original_format_counts_everything(tmp_path):
    a = tmp_path / "a.txt"
    a.write_bytes(b"One.\nTwo.\n\n\nAlone here.\n\nBad \xff byte.\nFine.\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    stats = CorpusStats()
    docs = list(read_documents([a, empty], stats=stats))
    assert docs == [["One.", "Two."], ["Alone here."], ["Bad \ufffd byte.", "Fine."]]
    assert (stats.files, stats.empty_files, stats.documents, stats.sentences) == (2, 1, 3, 5)
    assert stats.single_sentence_documents == 1 and stats.undecodable_lines == 1


def test_reading_jsonl_and_paragraphs(tmp_path):
    j = tmp_path / "c.jsonl"
    j.write_text(json.dumps({"text": "A b. C d."}) + "\n\n" + json.dumps({"text": ""}) + "\n")
    stats = CorpusStats()
    assert list(read_documents([j], stats=stats)) == [["A b.", "C d."]]
    assert stats.empty_documents == 1
    p = tmp_path / "p.txt"
    p.write_text("First doc. Two sentences.\nSecond doc.\n")
    assert list(read_documents([p], fmt="paragraphs")) == [["First doc.", "Two sentences."], ["Second doc."]]


@pytest.mark.parametrize("line, message", [
    ('{"text": "ok"', r"c\.jsonl:2: not valid JSON"),
    ('{"body": "ok"}', r"c\.jsonl:2: no 'text' field"),
    ('{"text": 3}', r"c\.jsonl:2: field 'text' is int"),
])
def test_bad_jsonl_is_a_clear_error_naming_file_and_line(tmp_path, line, message):
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "fine."}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        list(read_documents([f]))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        list(read_documents([tmp_path / "nope.txt"]))
    (tmp_path / "x.txt").write_text("a\n")
    with pytest.raises(ValueError, match="format must be"):
        list(read_documents([tmp_path / "x.txt"], fmt="xml"))


# ---------------------------------------------------------------------------- instances


def make_instances(short_seq_prob: float):
    rng = random.Random(0)
    # 200 documents of 40..80 sentences; sentence s of document d is tokens [d*1000 + s*10 + k].
    docs = [[[d * 1000 + s * 10 + k for k in range(rng.randint(3, 9))] for s in range(rng.randint(40, 80))]
            for d in range(200)]
    return [x for i in range(len(docs)) for x in document_instances(docs, i, 64, short_seq_prob, rng)]


def test_instances_follow_googles_recipe():
    insts = make_instances(0.1)
    assert all(1 <= len(x.tokens_a) and 1 <= len(x.tokens_b) and len(x.tokens_a) + len(x.tokens_b) <= 61
               for x in insts)
    random_share = np.mean([x.is_random_next for x in insts])
    assert 0.5 < random_share < 0.62  # half, plus the one-sentence chunks that must take a random B
    for x in insts:
        doc_a, doc_b = x.tokens_a[0] // 1000, x.tokens_b[0] // 1000
        if x.is_random_next:
            assert doc_a != doc_b
        else:  # B is the same document's continuation of A
            assert doc_a == doc_b and x.tokens_b[0] > x.tokens_a[-1]
    # Sequences are filled up to the maximum, except where a document (with prob. short_seq_prob)
    # got a shorter random target, and at document ends.
    filled = {p: np.mean([len(x.tokens_a) + len(x.tokens_b) >= 55 for x in make_instances(p)]) for p in (0.0, 1.0)}
    assert filled[0.0] > 0.85 and filled[1.0] < 0.2
    assert filled[1.0] < np.mean([len(x.tokens_a) + len(x.tokens_b) >= 55 for x in insts]) < filled[0.0]


def test_truncate_seq_pair_trims_the_longer_side():
    a, b = list(range(10)), list(range(100, 103))
    truncate_seq_pair(a, b, 8, random.Random(1))
    assert len(a) == 5 and b == [100, 101, 102]
    assert a == sorted(a) and set(a) <= set(range(10))


# ---------------------------------------------------------------------------- shards


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    corpus = imdb_sample(root / "imdb.jsonl", 120)
    meta = prepare(minilm_dir(), [corpus], root / "out", max_seq_length=64, docs_per_shard=50, workers=1,
                   progress=False)
    return root, corpus, meta


def test_prepare_writes_shards_that_read_back(prepared):
    root, _, meta = prepared
    s = meta["stats"]
    assert s["documents"] == 120 and s["files"] == 1 and len(meta["shards"]) == 3
    data = PretrainingData(root / "out")
    tok = Tokenizer.from_pretrained(root / "out")  # the vocabulary travels with the shards
    assert len(data) == s["instances"] == sum(x["instances"] for x in meta["shards"])
    nsp = []
    for i in range(len(data)):
        ids, a_end, is_random_next = data[i]
        assert len(ids) <= 64 and ids[0] == tok.cls_token_id and ids[a_end - 1] == tok.sep_token_id
        assert ids[-1] == tok.sep_token_id and (ids == tok.sep_token_id).sum() == 2
        nsp.append(is_random_next)
    assert s["next_instances"] == nsp.count(0)
    text = tok.decode(data[0][0].tolist())
    assert "bromwell high" in text  # the first review, tokenized as the tokenizer does it


def test_prepare_is_deterministic_for_a_seed_whatever_the_workers(prepared, tmp_path):
    root, corpus, meta = prepared
    again = prepare(minilm_dir(), [corpus], tmp_path / "two", max_seq_length=64, docs_per_shard=50, workers=2,
                    progress=False)
    assert again["stats"] == meta["stats"]
    for s in meta["shards"]:
        for name in ("ids", "offsets", "a_end", "next"):
            assert np.array_equal(np.load(root / "out" / s["name"] / f"{name}.npy"),
                                  np.load(tmp_path / "two" / s["name"] / f"{name}.npy"))
    other = prepare(minilm_dir(), [corpus], tmp_path / "seed", max_seq_length=64, docs_per_shard=50, workers=1,
                    seed=7, progress=False)
    assert other["stats"]["instances"] != meta["stats"]["instances"] or not np.array_equal(
        np.load(root / "out" / "shard-00000" / "ids.npy"), np.load(tmp_path / "seed" / "shard-00000" / "ids.npy"))


def test_prepare_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        prepare(minilm_dir(), [tmp_path / "missing.txt"], tmp_path / "o", workers=1, progress=False)
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no training instances"):
        prepare(minilm_dir(), [tmp_path / "blank.txt"], tmp_path / "o", workers=1, progress=False)
    with pytest.raises(ValueError, match="max_seq_length"):
        prepare(minilm_dir(), [tmp_path / "blank.txt"], tmp_path / "o", max_seq_length=1000, progress=False)
    with pytest.raises(FileNotFoundError, match="bertkit prepare"):
        PretrainingData(tmp_path / "o")  # a failed prepare leaves no meta.json: never half-read


def test_long_sentences_are_cut_not_lost(tmp_path):
    f = tmp_path / "long.txt"
    f.write_text(" ".join(["word"] * 300) + "\nShort one.\n\nOther doc.\nAnd more.\n")
    meta = prepare(minilm_dir(), [f], tmp_path / "o", max_seq_length=32, workers=1, progress=False)
    assert meta["stats"]["long_sentences"] == 1
    data = PretrainingData(tmp_path / "o")
    words = sum(int((data[i][0] == 2773).sum()) for i in range(len(data)))  # 2773 = "word"
    assert words > 150  # the 300-word line is spread over several instances, not truncated to one


def test_vocabulary_mismatch_is_refused(prepared, tmp_path):
    data = PretrainingData(prepared[0] / "out")
    data.check_vocab(Tokenizer.from_pretrained(minilm_dir()).vocab)
    with pytest.raises(ValueError, match="different vocabulary"):
        data.check_vocab(Tokenizer.from_pretrained(small_vocab(tmp_path / "v")).vocab)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


def _set_meta(out, change):
    meta = json.loads((out / "meta.json").read_text())
    change(meta)
    (out / "meta.json").write_text(json.dumps(meta))


def _rewrite(path, change):
    a = np.load(path)
    change(a)
    np.save(path, a)


def _pickled(path):
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)


DAMAGES = {  # name -> (damage(out folder), what the error must say)
    "truncated ids": (lambda o: _truncate(o / "shard-00001" / "ids.npy"), r"shard-00001/ids.npy: truncated or damaged"),
    "missing array": (lambda o: (o / "shard-00002" / "next.npy").unlink(), r"shard-00002/next.npy: missing"),
    "pickled array": (lambda o: _pickled(o / "shard-00000" / "a_end.npy"), r"shard-00000/a_end.npy: truncated or"),
    "wrong dtype": (lambda o: np.save(o / "shard-00000" / "offsets.npy", np.zeros(3, np.float32)),
                    r"offsets.npy: expected a 1-D int64 array"),
    "id above the vocabulary": (lambda o: _rewrite(o / "shard-00001" / "ids.npy", lambda a: a.__setitem__(5, 40000)),
                                r"shard-00001/ids.npy: token id 40000 is not in the vocabulary of 30522"),
    "offsets not rising": (lambda o: _rewrite(o / "shard-00000" / "offsets.npy",
                                              lambda a: a.__setitem__(3, a[2] - 1)), r"offsets must rise"),
    "instances not as in meta": (lambda o: _set_meta(o, lambda m: m["shards"][1].__setitem__("instances", 3)),
                                 r"shard-00001: \d+ instances and \d+ tokens on disk, .*meta.json says 3 and"),
    "tokens not as in meta": (lambda o: _set_meta(o, lambda m: m["shards"][0].__setitem__("tokens", 10**9)),
                              r"says \d+ and 1000000000"),
    "shard outside the folder": (lambda o: _set_meta(o, lambda m: m["shards"][0].__setitem__("name", "../shard")),
                                 r"shard name '../shard' is not a folder inside"),
    "meta not JSON": (lambda o: (o / "meta.json").write_text("{"), r"meta.json: not valid JSON"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_shards_are_one_line_errors_naming_the_file(prepared, tmp_path, damage):
    out = tmp_path / "out"
    shutil.copytree(prepared[0] / "out", out)
    PretrainingData(out)  # the copy reads back
    change, message = DAMAGES[damage]
    change(out)
    with pytest.raises(ValueError, match=message) as e:
        PretrainingData(out)
    assert "\n" not in str(e.value)


def test_fingerprints_tell_data_and_batches_apart(prepared, tmp_path):
    shutil.copytree(prepared[0] / "out", tmp_path / "copy")
    data, copy = PretrainingData(prepared[0] / "out"), PretrainingData(tmp_path / "copy")
    assert data.fingerprint() == copy.fingerprint()  # a copy is the same data
    m, _ = masker()
    batches = lambda d, ids=range(50), seed=0, cfg=m: MaskedBatches(d, list(ids), 8, cfg, seed=seed)
    same = batches(data).fingerprint()
    assert batches(copy).fingerprint() == same
    others = [batches(data, ids=range(1, 51)), batches(data, seed=1), batches(data, cfg=masker(whole_word=True)[0])]
    assert len({same, *(b.fingerprint() for b in others)}) == 4
    other_prep = prepare(minilm_dir(), [prepared[1]], tmp_path / "seed", max_seq_length=64, docs_per_shard=50,
                         workers=1, seed=7, progress=False)
    assert other_prep and PretrainingData(tmp_path / "seed").fingerprint() != data.fingerprint()


def test_prepare_parts_are_disjoint_complete_and_read_as_one_corpus(prepared, tmp_path):
    _, corpus, whole = prepared
    for i in range(3):
        prepare(minilm_dir(), [corpus], tmp_path / "parts", max_seq_length=64, docs_per_shard=25, workers=1,
                shard=(i, 3), progress=False)
    folders = [tmp_path / "parts" / f"part-{i}-of-3" for i in range(3)]
    metas = [json.loads((f / "meta.json").read_text()) for f in folders]
    assert [m["part"]["documents"] for m in metas] == [40, 40, 40]
    # Shard numbers interleave across parts (every shard its own RNG seed), never repeat.
    names = [s["name"] for m in metas for s in m["shards"]]
    assert sorted(names) == [f"shard-{n:05d}" for n in range(6)]
    # Document d's text is in part d % 3 (B segments come from the same shard, so from the same part).
    tok = Tokenizer.from_pretrained(minilm_dir())
    grams = []
    for f in folders:
        part = PretrainingData(f)
        grams.append({tuple(ids[k:k + 6].tolist()) for ids, _, _ in (part[j] for j in range(len(part)))
                      for k in range(len(ids) - 5)})
    docs = list(read_documents([corpus]))
    for d, doc in enumerate(docs):
        if [x[0] for x in docs].count(doc[0]) > 1:
            continue  # IMDB repeats a few reviews (near copies): one may sit in another part
        ids = [i for sentence in doc for i in tok.encode(sentence, truncation=False).input_ids[1:-1]]
        hits = [sum(tuple(ids[k:k + 6]) in g for k in range(len(ids) - 5)) for g in grams]
        assert hits[d % 3] == max(hits) > 2 * sorted(hits)[1], (d, hits)  # other parts: shared phrases at most
    # Read as one corpus: part 0's instances, then part 1's, then part 2's.
    data = open_prepared(tmp_path / "parts")
    assert isinstance(data, PretrainingParts)
    parts = [PretrainingData(f) for f in folders]
    assert len(data) == sum(len(p) for p in parts) == sum(m["stats"]["instances"] for m in metas)
    assert np.array_equal(data[len(parts[0])][0], parts[1][0][0])
    assert np.array_equal(data.lengths(), np.concatenate([p.lengths() for p in parts]))
    data.check_vocab(tok.vocab)
    assert Tokenizer.from_pretrained(data.dir).vocab == tok.vocab
    assert whole["stats"]["documents"] == 120 and isinstance(open_prepared(prepared[0] / "out"), PretrainingData)


def test_parts_that_do_not_make_one_corpus_are_refused(prepared, tmp_path):
    _, corpus, _ = prepared
    out = tmp_path / "parts"
    prepare(minilm_dir(), [corpus], out, max_seq_length=64, workers=1, shard=(0, 2), progress=False)
    with pytest.raises(ValueError, match="not parts 0 to 1 of 2"):
        open_prepared(out)  # part 1 missing
    prepare(minilm_dir(), [corpus], out, max_seq_length=32, workers=1, shard=(1, 2), progress=False)
    with pytest.raises(ValueError, match="different max_seq_length"):
        open_prepared(out)
    prepare(minilm_dir(), [corpus], out, max_seq_length=64, workers=1, shard=(1, 2), progress=False)
    assert len(open_prepared(out)) > 0
    prepare(minilm_dir(), [corpus], out, max_seq_length=64, workers=1, shard=(2, 3), progress=False)
    with pytest.raises(ValueError, match="not parts 0 to 1 of 2"):
        open_prepared(out)  # left over from another split
    with pytest.raises(ValueError, match="shard 2/2"):
        prepare(minilm_dir(), [corpus], out, workers=1, shard=(2, 2), progress=False)


# ---------------------------------------------------------------------------- masking


def masker(whole_word: bool = False, **kw) -> tuple[Masker, Tokenizer]:
    tok = Tokenizer.from_pretrained(minilm_dir())
    return Masker(MaskingConfig(whole_word=whole_word, **kw), tok.vocab, tok.special_ids, tok.mask_token_id), tok


def test_masking_statistics_80_10_10_and_never_specials(prepared):
    m, tok = masker()
    data = PretrainingData(prepared[0] / "out")
    rng = np.random.default_rng(0)
    counts = {"mask": 0, "random": 0, "same": 0}
    targets = tokens = 0
    for _ in range(3):
        for i in range(len(data)):
            ids = data[i][0]
            masked, pos, labels = m(ids, rng)
            assert np.all(np.diff(pos) > 0) and np.array_equal(labels, ids[pos])
            assert not any(int(ids[p]) in tok.special_ids for p in pos)
            assert len(pos) == min(20, max(1, round(len(ids) * 0.15)))
            unchanged = np.setdiff1d(np.arange(len(ids)), pos)
            assert np.array_equal(masked[unchanged], ids[unchanged])
            counts["mask"] += int((masked[pos] == tok.mask_token_id).sum())
            same = masked[pos] == ids[pos]
            counts["same"] += int(same.sum())
            counts["random"] += int(((masked[pos] != tok.mask_token_id) & ~same).sum())
            assert not any(int(t) in tok.special_ids - {tok.mask_token_id} for t in masked[pos])
            targets += len(pos)
            tokens += len(ids)
    share = {k: v / targets for k, v in counts.items()}
    assert share["mask"] == pytest.approx(0.8, abs=0.02)
    assert share["random"] == pytest.approx(0.1, abs=0.015)  # a random token can equal the original: rare
    assert share["same"] == pytest.approx(0.1, abs=0.015)
    assert targets / tokens == pytest.approx(0.15, abs=0.01)


def test_whole_word_masking_takes_every_piece_of_a_word():
    m, tok = masker(whole_word=True, max_predictions=40)
    ids = np.array(tok.encode("unbelievably tokenization of hyperparameters is overwhelmingly "
                              "misunderstood by philosophers " * 3).input_ids)
    rng = np.random.default_rng(1)
    cont = np.array([t.startswith("##") for t in tok.convert_ids_to_tokens(ids.tolist())])
    for _ in range(50):
        _, pos, _ = m(ids, rng)
        chosen = set(pos.tolist())
        for p in chosen:  # a chosen piece's neighbours within the same word are chosen too
            if cont[p]:
                assert p - 1 in chosen
            if p + 1 < len(ids) and cont[p + 1]:
                assert p + 1 in chosen


def test_masked_batches_are_a_function_of_seed_epoch_and_index(prepared):
    m, _ = masker()
    data = PretrainingData(prepared[0] / "out")
    b = MaskedBatches(data, list(range(len(data))), 8, m, seed=3)
    first = b[2]
    assert set(first) == {"input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_lm_labels",
                          "next_sentence_label"}
    assert first["masked_positions"].shape == first["masked_lm_labels"].shape == (8, 20)
    assert ((first["masked_lm_labels"] == -100) == (first["masked_positions"] == 0)).all()
    again = MaskedBatches(data, list(range(len(data))), 8, m, seed=3)[2]
    assert all((first[k] == again[k]).all() for k in first)
    b.set_epoch(1)
    assert len(b) == -(-len(data) // 8)
    assert not all(first[k].shape == b[2][k].shape and (first[k] == b[2][k]).all() for k in first)
    seen = sorted(i for batch in b.order for i in batch)
    assert seen == list(range(len(data)))


def test_masked_batches_stack_like_collate_and_match_their_instances(prepared):
    """The batch is built as whole arrays: each row must still be its instance, masked, in collate's layout."""
    m, tok = masker()
    data = PretrainingData(prepared[0] / "out")
    b = MaskedBatches(data, list(range(len(data))), 8, m, seed=5)
    for i in range(len(b)):
        batch = b[i]
        features = []
        for row, j in enumerate(b.order[i]):
            ids, a_end, nsp = data[j]
            n = len(ids)
            pos, lab = batch["masked_positions"][row].numpy(), batch["masked_lm_labels"][row].numpy()
            target = lab != -100
            assert target.sum() == min(20, max(1, round(n * 0.15))) and np.all(np.diff(pos[target]) > 0)
            assert np.array_equal(lab[target], ids[pos[target]])
            masked = batch["input_ids"][row, :n].numpy()
            untouched = np.ones(n, dtype=bool)
            untouched[pos[target]] = False
            assert np.array_equal(masked[untouched], ids[untouched])
            features.append({"input_ids": masked.tolist(), "token_type_ids": [0] * a_end + [1] * (n - a_end),
                             "attention_mask": [1] * n, "masked_positions": pos.tolist(),
                             "masked_lm_labels": lab.tolist(), "next_sentence_label": nsp})
        expected = collate(features)
        assert set(expected) == set(batch)
        for key in expected:
            assert batch[key].dtype == expected[key].dtype and torch.equal(batch[key], expected[key]), key
