"""Checkpoints: name resolution, file formats, key variants, and clear errors."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertkit import checkpoint
from bertkit.config import BertConfig
from bertkit.heads import BertForMaskedLM, BertForPreTraining, BertForSequenceClassification, BertModel


def tiny_dir(tmp_path, cls=BertForPreTraining, name="tiny"):
    """A saved random tiny model of class cls, as other tools write checkpoints: without bertkit's
    SHA256SUMS manifest, so that tests may edit its files."""
    torch.manual_seed(0)
    model = cls(BertConfig.preset("tiny", vocab_size=99, max_position_embeddings=32))
    directory = model.save_pretrained(tmp_path / name)
    (directory / checkpoint.MANIFEST).unlink()
    return model, directory


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def rewrite(directory, change) -> None:
    """Apply change(dict of tensors) to directory/model.safetensors."""
    state = load_file(directory / "model.safetensors")
    change(state)
    save_file(state, directory / "model.safetensors")


# ---------------------------------------------------------------- names

def test_load_from_hub_cache_layout(minilm, tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--acme--minilm" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).symlink_to(minilm / name)  # the cache's own layout: links to blobs
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = BertModel.from_pretrained("acme/minilm")
    assert same_state(model, BertModel.from_pretrained(minilm))


def test_unknown_name_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        BertModel.from_pretrained("nobody/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        BertModel.from_pretrained(tmp_path / "empty")


# ---------------------------------------------------------------- formats and key variants

def test_save_load_round_trip_and_hugging_face_key_names(minilm, tmp_path):
    model = BertModel.from_pretrained(minilm)
    out = model.save_pretrained(tmp_path / "copy")
    written = load_file(out / "model.safetensors")
    original = load_file(minilm / "model.safetensors")
    assert written.keys() == original.keys() - {"embeddings.position_ids"}
    assert all(torch.equal(written[k], original[k]) for k in written)
    assert same_state(model, BertModel.from_pretrained(out))
    # Tokenizer files travel with the model; config keeps its unknown keys but not the previous
    # writer's stale ones (the base model's name, the transformers version that wrote it).
    for name in ("vocab.txt", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (minilm / name).read_bytes()
    saved = json.loads((out / "config.json").read_text())
    assert saved["gradient_checkpointing"] is False and saved["use_cache"] is True
    assert "_name_or_path" not in saved and "transformers_version" not in saved


def test_save_with_tokenizer(minilm, tmp_path):
    tokenizer_module = pytest.importorskip("bertkit.tokenizer")
    model, _ = tiny_dir(tmp_path)
    out = model.save_pretrained(tmp_path / "with_tok", tokenizer=tokenizer_module.Tokenizer.from_pretrained(minilm))
    assert (out / "vocab.txt").read_text() == (minilm / "vocab.txt").read_text()
    assert (out / "tokenizer_config.json").is_file()


def test_pytorch_model_bin_is_read_safely(tmp_path, minilm):
    state = load_file(minilm / "model.safetensors")
    (tmp_path / "bin").mkdir()
    shutil.copy(minilm / "config.json", tmp_path / "bin")
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    assert same_state(BertModel.from_pretrained(tmp_path / "bin"), BertModel.from_pretrained(minilm))
    # A pickle that would build an arbitrary object is refused, not run.
    torch.save({"weights": logging.Formatter()}, tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickled code"):
        BertModel.from_pretrained(tmp_path / "bin")


def test_sharded_safetensors_are_read_shard_by_shard(tmp_path):
    pretrained, d = tiny_dir(tmp_path)
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    keys = sorted(state)
    # Split a layer's query/key/value across the two shards: fusing must wait for the second file.
    cut = keys.index(next(k for k in keys if k.endswith("attention.self.query.weight")))
    shards = {"model-00001-of-00002.safetensors": keys[:cut], "model-00002-of-00002.safetensors": keys[cut:]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, d / name)
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert same_state(BertForPreTraining.from_pretrained(d), pretrained)


def test_keys_with_and_without_bert_prefix_and_legacy_names(tmp_path):
    pretrained, d = tiny_dir(tmp_path)
    # Prefixed checkpoint (with heads) into a bare BertModel: heads ignored, encoder identical.
    bare = BertModel.from_pretrained(d)
    assert same_state(bare, pretrained.bert)
    # Unprefixed checkpoint (BertModel) into a head model.
    d2 = bare.save_pretrained(tmp_path / "bare")
    assert "embeddings.word_embeddings.weight" in load_file(d2 / "model.safetensors")
    mlm = BertForMaskedLM.from_pretrained(d2)  # no pooler in this model: the file's pooler is ignored
    bare_state = bare.state_dict()
    assert all(torch.equal(t, bare_state[k]) for k, t in mlm.bert.state_dict().items())
    # TF-era names: LayerNorm.gamma / LayerNorm.beta, and the tied decoder stored explicitly.
    def legacy(state):
        for k in [k for k in state if "LayerNorm" in k]:
            state[k.replace(".weight", ".gamma").replace(".bias", ".beta")] = state.pop(k)
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
        state["bert.embeddings.position_ids"] = torch.arange(32)[None]
    rewrite(d, legacy)
    assert same_state(BertForPreTraining.from_pretrained(d), pretrained)


# ---------------------------------------------------------------- errors and reports

def test_missing_head_is_initialised_and_reported_in_one_line(minilm, caplog):
    with caplog.at_level(logging.INFO, logger="bertkit"):
        model = BertForSequenceClassification.from_pretrained(minilm, num_labels=3)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "\n" not in message and "classifier.weight" in message and "classifier.bias" in message
    assert model.classifier.weight.shape == (3, 384)
    assert not model.training


def test_other_heads_weights_are_ignored_quietly(tmp_path, caplog):
    _, d = tiny_dir(tmp_path)
    with caplog.at_level(logging.INFO, logger="bertkit"):
        BertForSequenceClassification.from_pretrained(d)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and "cls.seq_relationship.weight" in info[0]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # the new classifier


def test_shape_mismatch_names_the_key(tmp_path):
    _, d = tiny_dir(tmp_path)
    with pytest.raises(ValueError, match=r"bert.embeddings.word_embeddings.weight.*\(99, 128\).*\(100, 128\)"):
        BertForPreTraining.from_pretrained(d, vocab_size=100)
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.1\..* has no place in BertForPreTraining"):
        BertForPreTraining.from_pretrained(d, num_hidden_layers=1)


def test_unknown_and_missing_keys_are_errors(tmp_path):
    _, d = tiny_dir(tmp_path)
    rewrite(d, lambda s: s.update({"bert.encoder.layer.0.attention.self.rotary.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match="unknown weight 'bert.encoder.layer.0.attention.self.rotary.weight'"):
        BertForPreTraining.from_pretrained(d)
    _, d = tiny_dir(tmp_path, name="again")
    rewrite(d, lambda s: s.pop("bert.encoder.layer.1.attention.self.key.bias"))
    with pytest.raises(ValueError, match="missing weight encoder.layer.1.attention.self.key.bias"):
        BertForPreTraining.from_pretrained(d)
    _, d = tiny_dir(tmp_path, name="third")
    rewrite(d, lambda s: s.pop("bert.encoder.layer.0.output.dense.weight"))
    with pytest.raises(ValueError, match=r"missing weight\(s\).*layers.0.mlp.proj.weight"):
        BertForPreTraining.from_pretrained(d)


def test_untied_decoder_is_refused(tmp_path):
    _, d = tiny_dir(tmp_path)
    rewrite(d, lambda s: s.update({"cls.predictions.decoder.weight": torch.randn(99, 128)}))
    with pytest.raises(ValueError, match="decoder.weight differs"):
        BertForPreTraining.from_pretrained(d)


# ---------------------------------------------------------------- damaged files, manifest, model card


def one_line(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_damaged_safetensors_is_a_one_line_error_naming_the_file(tmp_path, damage):
    _, d = tiny_dir(tmp_path)
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[8:20] = b"\xff" * 12  # the JSON header no longer parses
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as e:
        BertForPreTraining.from_pretrained(d)
    one_line(e, str(path), "damaged safetensors file")


def test_save_writes_a_manifest_that_catches_a_flipped_bit(tmp_path):
    model, _ = tiny_dir(tmp_path)
    d = model.save_pretrained(tmp_path / "saved")
    listed = {line.split("  ")[1] for line in (d / checkpoint.MANIFEST).read_text().splitlines()}
    assert listed == {"model.safetensors"}  # tiny_dir's model has no tokenizer to list
    assert same_state(BertForPreTraining.from_pretrained(d), model)  # a good manifest loads
    if shutil.which("sha256sum"):  # the standard tool reads it too
        import subprocess

        assert subprocess.run(["sha256sum", "-c", "--quiet", checkpoint.MANIFEST], cwd=d).returncode == 0
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as e:
        BertForPreTraining.from_pretrained(d)
    one_line(e, str(path), "sha256 differs")


def test_vocabulary_larger_than_the_embeddings_is_an_error(tmp_path):
    _, d = tiny_dir(tmp_path)  # vocab_size 99
    (d / "vocab.txt").write_text("".join(f"tok{i}\n" for i in range(120)))
    with pytest.raises(ValueError) as e:
        BertForPreTraining.from_pretrained(d)
    one_line(e, "vocab.txt", "120 tokens", "99")


def test_shard_index_may_not_point_outside_its_folder(tmp_path):
    _, d = tiny_dir(tmp_path)
    (d / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    index = {"metadata": {}, "weight_map": {"bert.embeddings.word_embeddings.weight": "../elsewhere.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError) as e:
        BertForPreTraining.from_pretrained(d)
    one_line(e, "outside the checkpoint folder")
    (d / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ValueError) as e:
        BertForPreTraining.from_pretrained(d)
    one_line(e, "model.safetensors.index.json", "not a safetensors index")


def test_saved_files_follow_the_umask_and_carry_a_model_card(minilm, tmp_path):
    import os

    model = BertForSequenceClassification.from_pretrained(
        minilm, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    d = model.save_pretrained(tmp_path / "cls")
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.safetensors", "config.json", "vocab.txt", "README.md", checkpoint.MANIFEST):
        assert (d / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    card = (d / "README.md").read_text()
    assert "BertForSequenceClassification" in card and "`neg`" in card and "from_pretrained" in card
    assert str(minilm) in card  # the base model it came from


def test_non_finite_weights_are_never_saved(tmp_path):
    model, _ = tiny_dir(tmp_path)
    with torch.no_grad():
        model.bert.layers[0].mlp.fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        model.save_pretrained(tmp_path / "nan")
    assert not (tmp_path / "nan" / "model.safetensors").exists()
