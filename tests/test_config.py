"""BertConfig: presets have the published sizes; config.json round-trips through both libraries."""

from __future__ import annotations

import json

import pytest
import torch

from bertkit.config import BertConfig
from bertkit.heads import BertForPreTraining, BertModel

transformers = pytest.importorskip("transformers")

# Published sizes, Turc et al. 2019 (google-research/bert README) and Devlin et al. 2018,
# in millions. They count the pre-training model (encoder + MLM/NSP heads).
PUBLISHED_M = {"tiny": 4.4, "mini": 11.3, "small": 29.1, "medium": 41.7, "base": 110.1, "large": 340}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied parameters counted once


def hf_config(config: BertConfig):
    return transformers.BertConfig(**{k: v for k, v in config.to_dict().items() if k != "model_type"})


@pytest.mark.parametrize("name", list(PUBLISHED_M))
def test_preset_parameter_counts(name):
    config = BertConfig.preset(name)
    assert config.intermediate_size == 4 * config.hidden_size
    with torch.device("meta"):  # shapes only: no memory, no init time
        ours, ours_pt = BertModel(config), BertForPreTraining(config)
        ref, ref_pt = transformers.BertModel(hf_config(config)), transformers.BertForPreTraining(hf_config(config))
    assert n_params(ours) == n_params(ref)
    assert n_params(ours_pt) == n_params(ref_pt)
    published = PUBLISHED_M[name]
    got = n_params(ours_pt) / 1e6
    if name == "large":  # "340M" in the paper; the exact count is 336.2M
        assert abs(got - published) / published < 0.02, got
    else:  # published to 0.1M
        assert round(got, 1) == published, got


def test_base_is_bert_base():
    c = BertConfig.preset("base")
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (12, 768, 12, 3072)
    assert BertConfig.preset("tiny", vocab_size=100).vocab_size == 100
    with pytest.raises(ValueError, match="unknown preset"):
        BertConfig.preset("huge")


def test_minilm_config_round_trip_loses_nothing(minilm, tmp_path):
    original = json.loads((minilm / "config.json").read_text())
    config = BertConfig.from_json(minilm / "config.json")
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (6, 384, 12)
    assert config.extra["_name_or_path"] == original["_name_or_path"]  # unknown keys kept
    config.to_json(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text()) == original


def test_labels_written_as_hugging_face_writes_them(tmp_path):
    config = BertConfig.preset("tiny", id2label={0: "negative", 1: "neutral", 2: "positive"})
    assert config.num_labels == 3
    config.to_json(tmp_path / "config.json")
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert written["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}
    assert "num_labels" not in written
    hf = transformers.BertConfig.from_pretrained(tmp_path)
    assert hf.id2label == config.id2label and hf.num_labels == 3 and hf.hidden_size == 128
    back = BertConfig.from_json(tmp_path)
    assert back.id2label == config.id2label and back.num_labels == 3
    # And a config transformers wrote reads back the same.
    transformers.BertConfig(num_labels=4, hidden_size=256, num_attention_heads=4).save_pretrained(tmp_path / "hf")
    ours = BertConfig.from_json(tmp_path / "hf")
    assert ours.num_labels == 4 and ours.id2label[3] == "LABEL_3" and ours.hidden_size == 256


def test_replace_num_labels_resets_label_names():
    config = BertConfig.preset("tiny", id2label={0: "neg", 1: "pos"})
    three = config.replace(num_labels=3)
    assert three.num_labels == 3 and three.id2label is None
    assert three.to_dict()["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}


def test_bad_configs_are_clear_errors(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{\n  "hidden_size": 128,\n  "num_attention_heads": \n}')
    with pytest.raises(ValueError, match=r"config.json: line 4"):
        BertConfig.from_json(bad)
    with pytest.raises(ValueError, match="not a multiple"):
        BertConfig(hidden_size=100, num_attention_heads=3)
    bad.write_text('{"hidden_size": "768"}')
    with pytest.raises(ValueError, match=r"config.json: config field hidden_size must be int, got '768'"):
        BertConfig.from_json(bad)
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})


# ---------------------------------------------------------------- the settings loader

from dataclasses import dataclass, field  # noqa: E402
from typing import Literal  # noqa: E402

from bertkit.config import load_settings  # noqa: E402


@dataclass
class _Train:
    lr: float = 1e-3
    max_steps: int | None = None
    mixed_precision: Literal["no", "bf16"] = "no"
    out_dir: str | None = None
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class _Run:
    data: str = ""
    resume: bool = False
    train: _Train = field(default_factory=_Train)


def test_settings_from_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: shards\ntrain:\n  lr: 1e-4\n  max_steps: 10\n")
    cfg = load_settings(_Run, path, ["train.max_steps=20", "data=123", "train.betas=[0.8, 0.9]", "train.out_dir=null",
                                     "resume=true"])
    assert cfg == _Run(data="123", resume=True, train=_Train(lr=1e-4, max_steps=20, betas=(0.8, 0.9)))
    base = _Run(train=_Train(lr=5.0))  # the caller's defaults survive a file that does not set them
    assert load_settings(_Run, None, ["data=x"], base=base).train.lr == 5.0


@pytest.mark.parametrize("override,message", [
    ("train.max_steps=2.5", "'train.max_steps': 2.5 is not a whole number"),
    ("resume=maybe", "'resume': 'maybe' is not true or false"),
    ("train.mixed_precision=fp8", "'train.mixed_precision': 'fp8' is not one of no, bf16"),
    ("train.nope=1", "unknown setting 'train.nope'; valid keys: lr, max_steps, mixed_precision, out_dir, betas"),
    ("nope=1", "unknown setting 'nope'; valid keys: data, resume, train"),
    ("train.lr=fast", "'train.lr': 'fast' is not a number"),
    ("train", "is not key=value"),
])
def test_bad_settings_name_the_key_and_what_it_accepts(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_settings(_Run, None, [override])


def test_bad_settings_file_is_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML") as e:
        load_settings(_Run, path)
    assert "\n" not in str(e.value)
    path.write_text("- 1\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_settings(_Run, path)
