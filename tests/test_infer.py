"""infer.py: embeddings against sentence-transformers on real text; order, long inputs, dtypes, CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from bertkit.cli import main
from bertkit.heads import BertModel
from bertkit.infer import Embedder, embed, pool
from bertkit.precision import cast_model
from bertkit.tokenizer import Tokenizer
from conftest import data_path

N_SST2 = 40


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real SST-2 dev sentences (3 to 50+ words) and two IMDB reviews, shuffled so lengths are mixed."""
    lines = data_path("glue", "SST-2", "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sst2 = sorted((line.split("\t")[0].strip() for line in lines), key=len)
    picked = sst2[:: len(sst2) // N_SST2][:N_SST2]  # shortest to longest
    with open(data_path("imdb", "test.jsonl"), encoding="utf-8") as f:
        reviews = [json.loads(next(f))["text"] for _ in range(50)]
    imdb = [r for r in reviews if len(r) > 2500][:2]  # well over 256 tokens
    out = picked + imdb
    random.Random(0).shuffle(out)
    return out


@pytest.fixture(scope="module")
def embedder(minilm) -> Embedder:
    return Embedder.from_pretrained(minilm)


@pytest.fixture(scope="module")
def fp32(embedder, texts) -> np.ndarray:
    return embedder(texts, batch_size=8)


def test_matches_sentence_transformers(minilm, embedder, texts, fp32):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm), device="cpu")
    ref.max_seq_length = 256  # all-MiniLM-L6-v2's own setting
    expected = ref.encode(texts, batch_size=8, convert_to_numpy=True)
    ours = embed(texts, str(minilm), max_length=256, normalize=True, batch_size=8)
    # The IMDB reviews are longer than 256 tokens: this also checks truncation.
    assert cosine(ours, expected).min() >= 0.99999
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    # Below 256 tokens the default max_length (512) changes nothing.
    short = [i for i, t in enumerate(texts) if len(embedder.tokenizer.encode(t, truncation=False)) < 256]
    assert len(short) == N_SST2
    assert cosine(fp32[short], expected[short]).min() >= 0.99999


def test_order_and_batching_do_not_change_results(embedder, texts, fp32):
    # One text at a time (no padding at all) vs length-sorted padded batches.
    one_by_one = np.concatenate([embedder([t]) for t in texts[:12]])
    np.testing.assert_allclose(fp32[:12], one_by_one, atol=1e-5)
    reversed_ = embedder(texts[:24][::-1], batch_size=5)
    np.testing.assert_allclose(reversed_[::-1], fp32[:24], atol=1e-5)


def test_cls_pooling_is_the_first_vector(embedder, texts):
    cls = Embedder(embedder.model, embedder.tokenizer, pooling="cls")(texts[:3])
    for text, vec in zip(texts[:3], cls):
        ids = torch.tensor([embedder.tokenizer.encode(text).input_ids])
        with torch.inference_mode():
            first = embedder.model(ids).last_hidden_state[0, 0].numpy()
        np.testing.assert_allclose(vec, first, atol=1e-5)


def test_long_inputs_truncate_or_windows(embedder):
    with open(data_path("imdb", "test.jsonl"), encoding="utf-8") as f:
        words = " ".join(json.loads(next(f))["text"] for _ in range(20)).split()
    assert len(words) >= 2000
    long, short = " ".join(words[:2000]), "a short sentence ."
    truncated = embedder([long, short])
    assert len(embedder.tokenizer.encode(long, truncation=False)) > 2000
    # Truncation = the first 510 word pieces between [CLS] and [SEP].
    ids = embedder.tokenizer.encode(long, max_length=512).input_ids
    assert len(ids) == 512
    with torch.inference_mode():
        first = pool(embedder.model(torch.tensor([ids])).last_hidden_state, torch.ones(1, 512), "mean").numpy()
    np.testing.assert_allclose(truncated[:1], first, atol=1e-5)

    windowed = Embedder(embedder.model, embedder.tokenizer, long_inputs="windows", max_length=256, stride=64)
    got = windowed([long, short])
    # By hand: every window embedded alone, averaged weighted by its token count.
    features, owners = windowed.features([long])
    assert len(features) >= 10 and set(owners) == {0}
    vecs, weights = [], []
    with torch.inference_mode():
        for f in features:
            ids = torch.tensor([f["input_ids"]])
            vecs.append(pool(embedder.model(ids).last_hidden_state, torch.ones_like(ids), "mean")[0].numpy())
            weights.append(len(f["input_ids"]))
    np.testing.assert_allclose(got[0], np.average(vecs, axis=0, weights=weights), atol=1e-5)
    assert cosine(got[:1], truncated[:1])[0] < 0.999  # the rest of the text counts
    np.testing.assert_allclose(got[1], truncated[1], atol=1e-5)  # short texts: one window, unchanged


@pytest.mark.parametrize("dtype,min_cosine", [("bf16", 0.99), ("int8", 0.98)])
def test_low_precision_close_to_fp32(embedder, texts, fp32, dtype, min_cosine):
    low = Embedder(embedder.model, embedder.tokenizer, dtype=dtype)
    sst2 = [i for i, t in enumerate(texts) if len(t) < 1000]  # bf16 is slow on CPUs without bf16 units
    got = low([texts[i] for i in sst2], batch_size=8)
    assert got.dtype == np.float32
    c = cosine(got, fp32[sst2])
    assert c.mean() >= min_cosine and c.min() >= 0.93, (dtype, c.mean(), c.min())
    assert not np.array_equal(got, fp32)  # it really ran in another precision
    assert next(embedder.model.parameters()).dtype == torch.float32  # the fp32 model is untouched


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_inplace_cast_converts_the_model_itself_with_the_same_outputs(minilm, dtype):
    model = BertModel.from_pretrained(minilm)
    copy_out = cast_model(model, dtype)
    ids = torch.tensor([[101, 7592, 2088, 1010, 2023, 2003, 1037, 3231, 102]])
    with torch.inference_mode():
        expected = copy_out(ids).last_hidden_state
        same = cast_model(model, dtype, inplace=True)
        got = same(ids).last_hidden_state
    assert same is model and torch.equal(got, expected)
    if dtype == "int8":  # every Linear swapped for its quantized twin: no fp32 copy left behind
        assert not any(type(m) is torch.nn.Linear for m in model.modules())
    else:
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_loading_straight_into_a_dtype_equals_converting_after(minilm, dtype):
    # from_pretrained(dtype=...) converts each weight as it is read (never holding the fp32
    # model whole); the result must be the very model cast_model makes from the fp32 one.
    ids = torch.tensor([[101, 7592, 2088, 1010, 2023, 2003, 1037, 3231, 102]])
    direct = BertModel.from_pretrained(minilm, dtype=dtype)
    after = cast_model(BertModel.from_pretrained(minilm), dtype, inplace=True)
    with torch.inference_mode():
        assert torch.equal(direct(ids).last_hidden_state, after(ids).last_hidden_state)
        assert torch.equal(direct(ids).pooler_output, after(ids).pooler_output)
    assert not direct.training
    kinds = {type(m).__name__ for m in direct.modules()}
    assert ("Linear" in kinds) == (dtype == "bf16") and ("FullRangeDynamicLinear" in kinds) == (dtype == "int8")
    if dtype == "bf16":
        assert {p.dtype for p in direct.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="dtype must be one of"):
        BertModel.from_pretrained(minilm, dtype="fp16")


def test_cli_writes_npy_and_jsonl(minilm, texts, fp32, tmp_path, capsys):
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts[:6]) + "\n", encoding="utf-8")
    assert main(["embed", "--model", str(minilm), "--input", str(src), "--output", str(tmp_path / "e.npy"),
                 "--batch-size", "4"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), fp32[:6], atol=1e-5)
    assert main(["embed", "--model", str(minilm), "--input", str(src), "--output", str(tmp_path / "e.jsonl"),
                 "--pooling", "cls", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6]
    cls = Embedder.from_pretrained(minilm, pooling="cls")(texts[:6])
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), cls, atol=1e-5)


def test_int8_on_a_gpu_is_a_clear_error(minilm):
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        Embedder(BertModel.from_pretrained(minilm), Tokenizer.from_pretrained(minilm), dtype="int8", device="cuda")


def test_cli_bad_input_is_one_clear_line(minilm, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    assert main(["embed", "--model", str(minilm), "--input", str(empty), "--output", str(tmp_path / "o.npy")]) == 2
    assert "empty.txt: no texts" in capsys.readouterr().err
    src = tmp_path / "t.txt"
    src.write_text("hello\n", encoding="utf-8")
    missing = tmp_path / "no-such-model"
    assert main(["embed", "--model", str(missing), "--input", str(src), "--output", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "not found" in err and "Traceback" not in err
    assert main(["embed", "--model", str(minilm), "--input", str(tmp_path / "nope.txt"),
                 "--output", str(tmp_path / "o.npy")]) == 2
    assert "nope.txt" in capsys.readouterr().err
    assert main(["embed", "--model", str(minilm), "--input", str(src), "--output", str(tmp_path / "o.csv")]) == 2
    assert ".npy or .jsonl" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()


def test_prepare_then_run_is_the_call_and_mixes_requests(embedder, texts, fp32):
    # The two stages a server's batcher calls apart: prepare as each request arrives, run on many.
    prepared = embedder.prepare(texts)
    assert [p.n_tokens for p in prepared] == [len(embedder.tokenizer.encode(t, max_length=512).input_ids)
                                              for t in texts]
    np.testing.assert_allclose(embedder.run(prepared, batch_size=8), fp32, atol=1e-5)
    first, second = embedder.prepare(texts[:5]), embedder.prepare(texts[5:9])
    together = embedder.run(second + first, batch_size=4)  # one batch holds inputs of both
    np.testing.assert_allclose(together, np.concatenate([fp32[5:9], fp32[:5]]), atol=1e-5)
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        embedder.prepare("one text")


def test_prepare_says_what_truncation_cut(embedder):
    long, short = "word " * 40, "a short sentence ."
    cut = Embedder(embedder.model, embedder.tokenizer, max_length=16)
    p = cut.prepare([short, long])
    assert [x.truncated for x in p] == [False, True] and p[1].n_tokens == 16
    windows = Embedder(embedder.model, embedder.tokenizer, max_length=16, long_inputs="windows", stride=4)
    (w,) = windows.prepare([long])
    assert not w.truncated and len(w.features) > 1
    assert w.n_tokens == sum(len(f["input_ids"]) for f in w.features)
    np.testing.assert_allclose(windows.run([w]), windows([long]), atol=1e-6)


def test_onnx_backend_equals_torch_through_the_same_batching(minilm_onnx, embedder, texts, fp32):
    onnx = Embedder.from_pretrained(minilm_onnx, backend="onnx")
    assert onnx.dtype == "fp32" and type(onnx.model).__name__ == "OnnxModel"
    np.testing.assert_allclose(onnx(texts, batch_size=8), fp32, atol=1e-4)
    # Long inputs cut into windows run through the same path too.
    windows = dict(max_length=64, long_inputs="windows")
    np.testing.assert_allclose(Embedder.from_pretrained(minilm_onnx, backend="onnx", **windows)(texts[:10]),
                               Embedder(embedder.model, embedder.tokenizer, **windows)(texts[:10]), atol=1e-4)
    with pytest.raises(ValueError, match="apply to the torch backend"):
        Embedder.from_pretrained(minilm_onnx, backend="onnx", dtype="int8")
    with pytest.raises(ValueError, match="backend must be one of"):
        Embedder.from_pretrained(minilm_onnx, backend="tensorrt")
    with pytest.raises(FileNotFoundError, match="ONNX backend"):  # an export has no torch weights
        Embedder.from_pretrained(minilm_onnx)


def test_sentence_transformers_options_read_pooling_and_length(minilm, tmp_path):
    from bertkit.infer import sentence_transformers_options

    def sentence_pooling(folder):
        return sentence_transformers_options(folder).get("pooling", "mean")

    assert sentence_transformers_options(minilm) == {"pooling": "mean", "max_length": 256}  # all-MiniLM-L6-v2's
    assert sentence_transformers_options(tmp_path) == {}  # a plain checkpoint: nothing to say
    (tmp_path / "1_Pooling").mkdir()
    config = tmp_path / "1_Pooling" / "config.json"
    config.write_text(json.dumps({"word_embedding_dimension": 384, "pooling_mode_cls_token": True,
                                  "pooling_mode_mean_tokens": False}))
    assert sentence_pooling(tmp_path) == "cls"
    config.write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match=r"1_Pooling/config.json: pooling pooling_mode_max_tokens is not one"):
        sentence_pooling(tmp_path)
    config.write_text("{not json")
    with pytest.raises(ValueError, match="not a sentence-transformers config"):
        sentence_pooling(tmp_path)


def test_encode_speaks_sentence_transformers(minilm, embedder, texts, fp32):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm), device="cpu")
    want = ref.encode(texts[:8], batch_size=4, normalize_embeddings=True)
    got = embedder.encode(texts[:8], batch_size=4, normalize_embeddings=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    one = embedder.encode(texts[0])  # one text -> one vector, as sentence-transformers gives it
    assert one.shape == (embedder.dim,)
    np.testing.assert_allclose(one, fp32[0], atol=1e-5)
    assert isinstance(embedder.encode(texts[:2], convert_to_tensor=True), torch.Tensor)
