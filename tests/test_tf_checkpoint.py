"""Google's TensorFlow BERT checkpoints: read without TensorFlow, checked against what TensorFlow read.

The fixtures in tests/fixtures/tf were written by real TensorFlow (make_fixtures.py; see
there for how to regenerate) with Google's variable names, each with expected.npz holding
every tensor as tf.train.load_checkpoint(...).get_tensor(name) returned it. Two fixtures
come from the tests' own bundle writer (several snappy-compressed index blocks; big-endian
data), which TensorFlow never writes but reads, and expected.npz there is also TF's reading.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit import tf_checkpoint as tfc
from bertkit.config import BertConfig
from bertkit.heads import BertForPreTraining, BertModel

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf"
PRETRAINING = FIXTURES / "uncased_L-2_H-16_A-2"  # heads + Adam slots + global_step
ENCODER = FIXTURES / "cased_L-2_H-16_A-2_encoder"  # no cls/
SHARDED = FIXTURES / "sharded_L-2_H-16_A-2"  # heads, two data shards
ALL = sorted(p for p in FIXTURES.iterdir() if (p / "expected.npz").is_file())

_spec = importlib.util.spec_from_file_location("bundle_writer", FIXTURES / "bundle_writer.py")
writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer)


def copy_fixture(src: Path, tmp_path: Path, name: str | None = None) -> Path:
    return Path(shutil.copytree(src, tmp_path / (name or src.name)))


def one_line_error(exc_info, *fragments: str) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------- crc32c and snappy

def test_crc32c_known_vectors():
    assert tfc.crc32c(b"") == 0
    assert tfc.crc32c(b"123456789") == 0xE3069283
    # RFC 3720 (iSCSI), appendix B.4
    assert tfc.crc32c(bytes(32)) == 0x8A9136AA
    assert tfc.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tfc.crc32c(bytes(range(32))) == 0x46DD794E
    assert tfc.crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    # TensorFlow's mask and its inverse
    assert tfc.mask_crc(0) == 0xA282EAD8
    for crc in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert tfc.unmask_crc(tfc.mask_crc(crc)) == crc == tfc.unmask_crc(writer.mask(crc))


def test_crc32c_matches_a_byte_at_a_time_reference():
    """Every path of the lane-parallel code: Python words (<= 1 KB), numpy lanes, row tails, odd bytes."""
    rng = np.random.default_rng(0)
    sizes = list(range(0, 41)) + [1023, 1024, 1025, 1027, 4096, 5003, 9999, 65536 + 7]
    sizes += rng.integers(1, 20000, 12).tolist()
    for size in sizes:
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert tfc.crc32c(data) == writer.crc32c(data), size
    array = rng.standard_normal((37, 53)).astype(np.float32)
    assert tfc.crc32c(array) == writer.crc32c(array.tobytes())
    assert tfc.crc32c(array.T) == writer.crc32c(array.T.tobytes())  # not contiguous: C order, like tobytes


@pytest.mark.parametrize("long_offsets", [False, True])
def test_snappy_round_trip(long_offsets):
    rng = np.random.default_rng(1)
    samples = [b"", b"a", b"abcd" * 50, b"x" * 1000,  # overlapping copies (offset < length)
               rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),  # literals of 60+ and 256+ bytes
               rng.integers(0, 256, 70000, dtype=np.uint8).tobytes(),  # 3-byte literal lengths
               b"".join(rng.choice([b"bert/encoder/layer_", b"attention", b"/kernel", b"\x00\x01"], 3000))]
    for data in samples:
        packed = writer.snappy_compress(data, long_offsets)
        assert tfc.snappy_decompress(packed) == data
    assert len(writer.snappy_compress(samples[2])) < 40  # copies really were made


def test_snappy_damage_is_a_clear_error():
    packed = writer.snappy_compress(b"abcd" * 50)
    for bad, what in [(packed[:-1], "past the end"), (b"\x05\x00a", "decodes to"),
                      (b"\x08\x0d\x05\x00", "offset"), (b"\x0a\x0c", "past the end"),
                      (b"\x80", "truncated varint")]:
        with pytest.raises(ValueError) as e:
            tfc.snappy_decompress(bad, "blk")
        one_line_error(e, "blk", what)


# ---------------------------------------------------------------- every tensor, as TensorFlow reads it

@pytest.mark.parametrize("folder", ALL, ids=lambda p: p.name)
def test_every_tensor_equals_what_tensorflow_read(folder):
    expected = np.load(folder / "expected.npz")
    names = []
    for name, array in tfc.read_tf_variables(folder):
        names.append(name)
        want = expected[name]
        if array.dtype == object:  # string tensor: bytes objects
            assert array.tolist() == want.tolist(), name
            continue
        assert array.dtype == want.dtype and array.shape == want.shape, name
        assert np.array_equal(array, want), name
    assert names == sorted(expected.files)  # every one, in the index's (sorted) order


def test_fixtures_cover_what_they_claim():
    """The cases the fixtures exist for are really in them."""
    assert len(list(SHARDED.glob("bert_model.ckpt.data-*-of-00002"))) == 2
    names = np.load(PRETRAINING / "expected.npz").files
    assert "global_step" in names and sum(n.endswith(("/adam_m", "/adam_v")) for n in names) == 2 * 46
    dtypes = dict(tfc.read_tf_variables(FIXTURES / "dtypes"))
    assert {str(a.dtype) for a in dtypes.values()} >= {"float16", "float32", "float64", "int8", "uint8", "int16",
                                                        "int32", "int64", "bool", "object"}
    index = (FIXTURES / "snappy_blocks" / "bert_model.ckpt.index").read_bytes()
    footer = index[-48:]
    _, pos = tfc._block_handle(footer, 0, "footer")
    handle, _ = tfc._block_handle(footer, pos, "footer")
    blocks = [tfc._block_handle(v, 0, "")[0] for _, v in tfc._block_entries(tfc._read_block(index, handle, ""), "")]
    assert len(blocks) > 5 and all(index[offset + size] == 1 for offset, size in blocks)  # snappy, all


def test_read_is_one_tensor_at_a_time():
    variables = tfc.read_tf_variables(PRETRAINING)
    name, first = next(variables)
    assert name == "bert/embeddings/LayerNorm/beta" and first.shape == (16,)
    variables.close()  # closes the data files


# ---------------------------------------------------------------- names and weights

@pytest.mark.parametrize("name, hf", [
    ("bert/embeddings/word_embeddings", ("bert.embeddings.word_embeddings.weight", False)),
    ("bert/embeddings/token_type_embeddings", ("bert.embeddings.token_type_embeddings.weight", False)),
    ("bert/embeddings/LayerNorm/gamma", ("bert.embeddings.LayerNorm.weight", False)),
    ("bert/encoder/layer_11/attention/self/query/kernel", ("bert.encoder.layer.11.attention.self.query.weight", True)),
    ("bert/encoder/layer_0/attention/self/value/bias", ("bert.encoder.layer.0.attention.self.value.bias", False)),
    ("bert/encoder/layer_3/attention/output/dense/kernel",
     ("bert.encoder.layer.3.attention.output.dense.weight", True)),
    ("bert/encoder/layer_3/attention/output/LayerNorm/beta", ("bert.encoder.layer.3.attention.output.LayerNorm.bias",
                                                              False)),
    ("bert/encoder/layer_2/intermediate/dense/kernel", ("bert.encoder.layer.2.intermediate.dense.weight", True)),
    ("bert/encoder/layer_2/output/dense/bias", ("bert.encoder.layer.2.output.dense.bias", False)),
    ("bert/encoder/layer_2/output/LayerNorm/gamma", ("bert.encoder.layer.2.output.LayerNorm.weight", False)),
    ("bert/pooler/dense/kernel", ("bert.pooler.dense.weight", True)),
    ("cls/predictions/transform/dense/kernel", ("cls.predictions.transform.dense.weight", True)),
    ("cls/predictions/transform/LayerNorm/beta", ("cls.predictions.transform.LayerNorm.bias", False)),
    ("cls/predictions/output_bias", ("cls.predictions.bias", False)),
    ("cls/seq_relationship/output_weights", ("cls.seq_relationship.weight", False)),  # already [2, hidden]
    ("cls/seq_relationship/output_bias", ("cls.seq_relationship.bias", False)),
    ("output_weights", ("classifier.weight", False)),  # run_classifier.py
    ("output_bias", ("classifier.bias", False)),
    ("cls/squad/output_weights", ("qa_outputs.weight", False)),  # run_squad.py
    ("cls/squad/output_bias", ("qa_outputs.bias", False)),
    ("bert/encoder/layer_0/output/dense/kernel/adam_m", None),
    ("cls/predictions/output_bias/adam_v", None),
    ("bert/pooler/dense/bias/Adam_1", None),
    ("global_step", None), ("bad_steps", None), ("loss_scale", None), ("beta1_power", None),
])
def test_tf_to_hf_name(name, hf):
    assert tfc.tf_to_hf_name(name) == hf


def test_unknown_variable_is_a_clear_error():
    with pytest.raises(ValueError) as e:
        tfc.tf_to_hf_name("bert/encoder/layer_0/attention/self/qery/kernel", source="x/bert_model.ckpt.index")
    one_line_error(e, "x/bert_model.ckpt.index", "qery")
    with pytest.raises(ValueError) as e:  # query_b is not a BERT weight
        list(tfc.read_tf_weights(FIXTURES / "snappy_blocks"))
    one_line_error(e, str(FIXTURES / "snappy_blocks" / "bert_model.ckpt.index"), "_b/kernel'")


def test_read_tf_weights_names_transposes_and_skips_slots():
    expected = np.load(PRETRAINING / "expected.npz")
    weights = dict(tfc.read_tf_weights(PRETRAINING))
    assert len(weights) == 46 and not any("adam" in n or "step" in n for n in weights)
    kernel = weights["bert.encoder.layer.1.intermediate.dense.weight"]
    assert kernel.shape == (37, 16) and kernel.is_contiguous()  # [out, in]
    assert torch.equal(kernel, torch.from_numpy(expected["bert/encoder/layer_1/intermediate/dense/kernel"].T))
    assert torch.equal(weights["cls.seq_relationship.weight"],
                       torch.from_numpy(expected["cls/seq_relationship/output_weights"]))


# ---------------------------------------------------------------- folder, config, casing

def test_tf_config_is_a_hugging_face_bert_config(tmp_path):
    config = tfc.tf_config(PRETRAINING)
    google = json.loads((PRETRAINING / "bert_config.json").read_text())
    assert config == {**google, "layer_norm_eps": 1e-12, "model_type": "bert", "pad_token_id": 0}
    bk = BertConfig.from_dict(config)
    assert (bk.hidden_size, bk.intermediate_size, bk.vocab_size, bk.max_position_embeddings) == (16, 37, 99, 24)
    assert tfc.tf_config(PRETRAINING / "bert_model.ckpt") == config  # a prefix: its folder's config
    folder = copy_fixture(PRETRAINING, tmp_path)
    (folder / "bert_config.json").write_text(json.dumps({**google, "hidden_size": "16"}))
    with pytest.raises(ValueError) as e:
        tfc.tf_config(folder)
    one_line_error(e, "bert_config.json", "hidden_size")
    (folder / "bert_config.json").write_text("{not json")
    with pytest.raises(ValueError) as e:
        tfc.tf_config(folder)
    one_line_error(e, "bert_config.json", "invalid JSON")
    (folder / "bert_config.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        tfc.tf_config(folder)
    one_line_error(e, "bert_config.json")


def test_do_lower_case_from_folder_name_or_vocab(tmp_path):
    assert tfc.tf_do_lower_case(PRETRAINING) is True  # uncased_...
    assert tfc.tf_do_lower_case(ENCODER) is False  # cased_...
    assert tfc.tf_do_lower_case(SHARDED) is None  # no hint, no uppercase token
    assert tfc.tf_do_lower_case(copy_fixture(ENCODER, tmp_path, "biobert_v1.1_pubmed")) is False  # "The" in vocab
    assert tfc.tf_do_lower_case(copy_fixture(SHARDED, tmp_path, "scibert_scivocab_uncased")) is True
    assert tfc.tf_do_lower_case(copy_fixture(SHARDED, tmp_path, "multi_cased_L-12_H-768_A-12")) is False


def test_tokenizer_of_a_google_folder_follows_its_casing():
    from bertkit.tokenizer import Tokenizer

    uncased = Tokenizer.from_pretrained(PRETRAINING)
    cased = Tokenizer.from_pretrained(ENCODER)  # no tokenizer_config.json: the folder's name tells
    assert uncased.do_lower_case is True and cased.do_lower_case is False
    assert cased.tokenize("The") == ["The"] and uncased.tokenize("The") == ["the"]
    assert Tokenizer.from_pretrained(ENCODER, do_lower_case=True).do_lower_case is True  # an override wins


def test_finding_the_checkpoint_in_a_folder(tmp_path):
    for folder in (PRETRAINING, ENCODER, SHARDED):
        assert tfc.is_tf_checkpoint(folder)
        assert tfc.checkpoint_prefix(folder) == folder / "bert_model.ckpt"
    assert not tfc.is_tf_checkpoint(FIXTURES / "dtypes")  # no bert_config.json
    assert not tfc.is_tf_checkpoint(tmp_path)
    assert not tfc.is_tf_checkpoint(PRETRAINING / "bert_config.json")
    prefix = PRETRAINING / "bert_model.ckpt"
    assert tfc.checkpoint_prefix(prefix) == prefix == tfc.checkpoint_prefix(f"{prefix}.index")
    # A fine-tuning run's output folder: model.ckpt-N, several of them.
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(PRETRAINING / "bert_config.json", run)
    for step in (100, 200):
        for f in PRETRAINING.glob("bert_model.ckpt.*"):
            shutil.copy(f, run / f.name.replace("bert_model.ckpt", f"model.ckpt-{step}"))
    assert tfc.is_tf_checkpoint(run)  # a TF folder; which checkpoint, reading it asks
    with pytest.raises(ValueError) as e:
        tfc.checkpoint_prefix(run)
    one_line_error(e, str(run), "model.ckpt-100", "model.ckpt-200")
    (run / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-200"\n'
                                    'all_model_checkpoint_paths: "model.ckpt-100"\n')
    assert tfc.checkpoint_prefix(run) == run / "model.ckpt-200"
    with pytest.raises(FileNotFoundError) as e:
        tfc.checkpoint_prefix(tmp_path / "nothing" / "bert_model.ckpt")
    one_line_error(e, "bert_model.ckpt.index")
    with pytest.raises(FileNotFoundError) as e:
        list(tfc.read_tf_variables(tmp_path))
    one_line_error(e, str(tmp_path), "no TensorFlow checkpoint")


# ---------------------------------------------------------------- the converted model against transformers

def hf_module():
    return pytest.importorskip("transformers")


def batches(vocab_size: int, n: int = 3):
    """Random ids with padding (attention_mask 0 on the tail) and both segments."""
    g = torch.Generator().manual_seed(0)
    for batch, seq in [(3, 11), (2, 24), (4, 7)][:n]:
        ids = torch.randint(0, vocab_size, (batch, seq), generator=g)
        types = (torch.arange(seq) >= seq // 2).long().expand(batch, seq).clone()
        mask = torch.ones(batch, seq, dtype=torch.long)
        for row in range(1, batch):
            mask[row, seq - 2 * row:] = 0
        yield ids, types, mask


def reference(folder: Path, cls_name: str):
    """The reference path: transformers' model from tf_config, weights from read_tf_weights."""
    transformers = hf_module()
    config = transformers.BertConfig(**tfc.tf_config(folder))
    model = getattr(transformers, cls_name)(config).eval()
    state = dict(tfc.read_tf_weights(folder))
    if cls_name == "BertModel":
        state = {k.removeprefix("bert."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    assert set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}  # tied ones
    if cls_name == "BertForPreTraining":  # tied to the word embeddings / cls.predictions.bias
        words = model.bert.embeddings.word_embeddings.weight
        assert model.cls.predictions.decoder.weight.data_ptr() == words.data_ptr()
        assert torch.equal(model.cls.predictions.decoder.bias, state["cls.predictions.bias"])
    return model


def meta_load(cls, folder: Path):
    """from_pretrained straight from the TensorFlow folder (no conversion step)."""
    return cls.from_pretrained(folder)


@pytest.mark.parametrize("folder", [PRETRAINING, SHARDED], ids=lambda p: p.name)
def test_pretraining_outputs_equal_transformers(folder, tmp_path, one_thread):
    transformers = hf_module()
    hf = reference(folder, "BertForPreTraining")
    out = tfc.convert_tf_checkpoint(folder, tmp_path / "hf")
    converted = BertForPreTraining.from_pretrained(out)
    hf_loaded = transformers.BertForPreTraining.from_pretrained(out).eval()  # transformers reads the layout
    direct = meta_load(BertForPreTraining, folder)
    with torch.no_grad():
        for ids, types, mask in batches(99):
            want = hf(input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
            again = hf_loaded(input_ids=ids, token_type_ids=types, attention_mask=mask)
            assert torch.equal(again.prediction_logits, want.prediction_logits)
            for model in (converted, direct):
                got = model(ids, types, mask)
                hidden = model.bert(ids, types, mask).last_hidden_state
                real = mask.bool()  # padded positions are not compared: no one reads them
                torch.testing.assert_close(hidden[real], want.hidden_states[-1][real], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(got["logits"][real], want.prediction_logits[real], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(got["nsp_logits"], want.seq_relationship_logits, atol=1e-5, rtol=1e-5)


def test_encoder_outputs_equal_transformers(tmp_path, one_thread):
    transformers = hf_module()
    hf = reference(ENCODER, "BertModel")
    out = tfc.convert_tf_checkpoint(ENCODER, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    hf_loaded = transformers.BertModel.from_pretrained(out).eval()
    for model in (BertModel.from_pretrained(out), meta_load(BertModel, ENCODER)):
        with torch.no_grad():
            for ids, types, mask in batches(99):
                want = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
                assert torch.equal(hf_loaded(input_ids=ids, token_type_ids=types,
                                             attention_mask=mask).last_hidden_state, want.last_hidden_state)
                got = model(ids, types, mask)
                real = mask.bool()
                torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real],
                                           atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=1e-5, rtol=1e-5)


def test_convert_writes_the_hugging_face_layout(tmp_path, caplog):
    out = tfc.convert_tf_checkpoint(PRETRAINING, tmp_path / "models" / "bert")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json",
                                                     "vocab.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["bert"]  # no temporary folder left behind
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"] and config["hidden_size"] == 16
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True
    assert (out / "vocab.txt").read_bytes() == (PRETRAINING / "vocab.txt").read_bytes()
    from safetensors.torch import load_file
    assert load_file(out / "model.safetensors").keys() == dict(tfc.read_tf_weights(PRETRAINING)).keys()
    cased = tfc.convert_tf_checkpoint(ENCODER, tmp_path / "cased")
    assert json.loads((cased / "tokenizer_config.json").read_text())["do_lower_case"] is False
    with caplog.at_level(logging.WARNING):  # casing unknown: left to the tokenizer's default, said so
        unknown = tfc.convert_tf_checkpoint(SHARDED, tmp_path / "unknown")
    assert "do_lower_case" not in json.loads((unknown / "tokenizer_config.json").read_text())
    assert "cannot tell whether the model is cased" in caplog.text
    with pytest.raises(FileExistsError) as e:
        tfc.convert_tf_checkpoint(PRETRAINING, out)
    one_line_error(e, str(out), "already exists")
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert tfc.convert_tf_checkpoint(ENCODER, tmp_path / "empty") == tmp_path / "empty"


def test_convert_checks_the_config_against_the_weights(tmp_path):
    folder = copy_fixture(PRETRAINING, tmp_path)
    google = json.loads((folder / "bert_config.json").read_text())
    (folder / "bert_config.json").write_text(json.dumps({**google, "intermediate_size": 64}))
    with pytest.raises(ValueError) as e:
        tfc.convert_tf_checkpoint(folder, tmp_path / "out")
    one_line_error(e, "bert_model.ckpt.index", "intermediate.dense", "shape [37]", "implies [64]")
    (folder / "bert_config.json").write_text(json.dumps({**google, "num_hidden_layers": 3}))
    with pytest.raises(ValueError) as e:
        tfc.convert_tf_checkpoint(folder, tmp_path / "out")
    one_line_error(e, "missing encoder weights", "layer.2")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == [folder.name]


# ---------------------------------------------------------------- damaged files: one line, naming the file

def damaged(tmp_path: Path, name: str, change) -> Path:
    """A copy of the pre-training fixture with one of its files changed by change(bytes) -> bytes."""
    folder = copy_fixture(PRETRAINING, tmp_path)
    path = folder / name
    path.write_bytes(change(path.read_bytes()))
    return folder


def flip(at: int):
    def change(data: bytes) -> bytes:
        i = at % len(data)
        return data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1:]
    return change


INDEX = "bert_model.ckpt.index"
DATA = "bert_model.ckpt.data-00000-of-00001"


@pytest.mark.parametrize("name, change, fragments", [
    (INDEX, flip(-1), ["bad magic number"]),
    (INDEX, flip(200), ["block at 0 fails its crc32c check"]),  # inside the data block
    (INDEX, lambda d: d[:-10], ["bad magic number"]),
    (INDEX, lambda d: d[:40], ["too short"]),
    (INDEX, lambda d: b"", ["too short"]),
    (DATA, flip(1000), ["fails its crc32c check", "variable '"]),
    (DATA, lambda d: d[:-100], ["truncated data file"]),
    (DATA, lambda d: b"", ["truncated data file"]),
])
def test_damaged_file_is_a_one_line_error(tmp_path, name, change, fragments):
    folder = damaged(tmp_path, name, change)
    with pytest.raises(ValueError) as e:
        for _ in tfc.read_tf_variables(folder):
            pass
    one_line_error(e, str(folder / name), *fragments)
    with pytest.raises(ValueError):  # and so does everything built on the reader
        tfc.convert_tf_checkpoint(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_footer_pointing_outside_the_file(tmp_path):
    def far_index_handle(data: bytes) -> bytes:
        footer = bytearray(data[-48:])
        (offset, size), _ = tfc._block_handle(footer, 0, "footer")  # the metaindex handle stays
        handles = writer.varint(offset) + writer.varint(size) + writer.varint(10**9) + writer.varint(8)
        footer[:40] = handles + bytes(40 - len(handles))
        return data[:-48] + bytes(footer)
    folder = damaged(tmp_path, INDEX, far_index_handle)
    with pytest.raises(ValueError) as e:
        list(tfc.read_tf_variables(folder))
    one_line_error(e, str(folder / INDEX), "runs past the end")


def test_missing_data_shard(tmp_path):
    folder = copy_fixture(SHARDED, tmp_path)
    (folder / "bert_model.ckpt.data-00001-of-00002").unlink()
    with pytest.raises(FileNotFoundError) as e:
        list(tfc.read_tf_variables(folder))
    one_line_error(e, "bert_model.ckpt.data-00001-of-00002", "missing data shard")


def entry(dtype: int, shape: tuple[int, ...], size: int, shard: int = 0, crc: int = 0) -> bytes:
    dims = b"".join(writer.field(2, writer.field(1, d)) for d in shape)
    return (writer.field(1, dtype) + writer.field(2, dims) + writer.field(3, shard) + writer.field(5, size)
            + writer.field(6, crc, fixed32=True))


@pytest.mark.parametrize("value, fragments", [
    (entry(1, (2,), 8, shard=3), ["in data shard 3", "has 1"]),
    (entry(8, (2,), 16), ["unsupported dtype complex64"]),
    (entry(21, (1,), 4), ["unsupported dtype variant"]),
    (entry(1, (3,), 8), ["8 bytes for shape [3]"]),
    (b"\x08", ["truncated varint"]),
    (b"\x0b", ["wire type 3"]),
    (writer.field(2, b"\x12\x05"), ["runs past the end"]),
    (writer.field(2, 5), ["field 2 is varint, expected length-delimited"]),
    (writer.field(1, b"float"), ["field 1 is length-delimited, expected varint"]),
])
def test_malformed_entry_is_a_one_line_error(tmp_path, value, fragments):
    prefix = tmp_path / "bert_model.ckpt"
    header = writer.field(1, 1)
    writer.write_table(Path(f"{prefix}.index"), [(b"", header), (b"bad/variable", value)])
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(64))
    with pytest.raises(ValueError) as e:
        list(tfc.read_tf_variables(prefix))
    message = one_line_error(e, *fragments)
    assert str(tmp_path) in message and "bad/variable" in message


def test_damage_behind_a_valid_crc_is_still_a_one_line_error(tmp_path):
    """Random bytes changed in the index's data block (its CRC then recomputed, as a buggy
    writer would) and random truncations: every outcome is a clean read or a one-line
    ValueError, never an IndexError, struct.error or TypeError from deep inside."""
    folder = copy_fixture(SHARDED, tmp_path)
    index = folder / INDEX
    original = index.read_bytes()
    (metaindex_offset, _), _ = tfc._block_handle(original[-48:], 0, "footer")
    block_end = metaindex_offset - 5  # the one data block: [0, block_end), then its trailer
    rng = np.random.default_rng(7)
    outcomes = {"read": 0, "error": 0}
    for trial in range(150):
        data = bytearray(original)
        for at in rng.integers(0, block_end, rng.integers(1, 4)):
            data[at] = rng.integers(0, 256)
        crc = writer.mask(writer.crc32c(bytes(data[:block_end + 1])))
        data[block_end + 1:block_end + 5] = crc.to_bytes(4, "little")
        if trial % 3 == 0:  # and sometimes a truncation too
            data = data[:rng.integers(0, len(data))]
        index.write_bytes(bytes(data))
        try:
            for _ in tfc.read_tf_variables(folder):
                pass
            outcomes["read"] += 1
        except ValueError as e:
            assert "\n" not in str(e) and str(folder) in str(e), str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > 50, outcomes


def test_malformed_table_is_a_one_line_error(tmp_path):
    prefix = tmp_path / "bert_model.ckpt"
    index = Path(f"{prefix}.index")
    writer.write_table(index, [(b"a", b"1")])  # no bundle header
    with pytest.raises(ValueError) as e:
        list(tfc.read_tf_variables(prefix))
    one_line_error(e, str(index), "no bundle header")
    writer.write_bundle(prefix, {"x": np.arange(3, dtype=np.float32)})
    data = bytearray(index.read_bytes())
    # Compression type 7 (then re-checksum the block, so that only the type is wrong). The one
    # data block starts at 0 and its trailer ends where the metaindex block (first in the footer) starts.
    (metaindex_offset, _), _ = tfc._block_handle(data[-48:], 0, "footer")
    kind_at = metaindex_offset - 5
    data[kind_at] = 7
    data[kind_at + 1:kind_at + 5] = writer.mask(writer.crc32c(bytes(data[:kind_at + 1]))).to_bytes(4, "little")
    index.write_bytes(bytes(data))
    with pytest.raises(ValueError) as e:
        list(tfc.read_tf_variables(prefix))
    one_line_error(e, str(index), "unknown compression type 7")
