"""Every head against its transformers twin, both ways: HF save -> bertkit load, bertkit save -> HF load.

Tiny random configs (with the real 30522-token vocab) on padded batches of real
SST-2 sentence pairs; logits and losses (with labels) must agree to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from bertkit import heads
from bertkit.config import BertConfig
from test_model import TOL, max_diff, sst2_batches

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=256, max_position_embeddings=128)


@pytest.fixture(scope="module")
def batch(minilm) -> dict:
    return sst2_batches(minilm, n_batches=1, batch_size=6, pairs=True)[0]


def make_labels(name: str, batch: dict, num_labels: int) -> tuple[dict, dict]:
    """(labels for transformers, the same labels as bertkit's batch fields)."""
    g = torch.Generator().manual_seed(1)
    b, s = batch["input_ids"].shape
    mask = batch["attention_mask"].bool()
    if name in ("BertForPreTraining", "BertForMaskedLM"):
        # 3 masked positions per row among the real tokens (after [CLS]), as the pre-training data gives them.
        positions = torch.stack([1 + torch.randperm(int(m.sum()) - 2, generator=g)[:3] for m in mask])
        targets = torch.randint(0, TINY["vocab_size"], positions.shape, generator=g)
        targets[0, 2] = -100  # a padded prediction slot
        full = torch.full((b, s), -100).scatter(1, positions, targets)
        nsp = torch.randint(0, 2, (b,), generator=g)
        hf = {"labels": full}
        bk = {"masked_positions": positions, "masked_lm_labels": targets}
        if name == "BertForPreTraining":
            hf["next_sentence_label"] = bk["next_sentence_label"] = nsp
        return hf, bk
    if name == "BertForNextSentencePrediction":
        nsp = torch.randint(0, 2, (b,), generator=g)
        return {"labels": nsp}, {"next_sentence_label": nsp}
    if name == "BertForSequenceClassification":
        labels = torch.randn(b, generator=g) if num_labels == 1 else torch.randint(0, num_labels, (b,), generator=g)
        return {"labels": labels}, {"labels": labels}
    if name == "BertForTokenClassification":
        labels = torch.randint(0, num_labels, (b, s), generator=g).masked_fill(~mask, -100)
        return {"labels": labels}, {"labels": labels}
    # Question answering; one answer past the end (truncated away), which both ignore.
    start = torch.randint(0, s, (b,), generator=g)
    end = torch.minimum(start + 2, torch.tensor(s - 1))
    start[0], end[0] = s + 5, s + 7
    return {"start_positions": start, "end_positions": end}, {"start_positions": start, "end_positions": end}


def hf_logits(name: str, out) -> dict[str, torch.Tensor]:
    if name == "BertForPreTraining":
        return {"logits": out.prediction_logits, "nsp_logits": out.seq_relationship_logits}
    if name == "BertForQuestionAnswering":
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}
    return {"logits": out.logits}


CASES = [
    ("BertForPreTraining", 2),
    ("BertForMaskedLM", 2),
    ("BertForNextSentencePrediction", 2),
    ("BertForSequenceClassification", 3),
    ("BertForSequenceClassification", 1),  # regression, MSE
    ("BertForTokenClassification", 5),
    ("BertForQuestionAnswering", 2),
]


@pytest.mark.parametrize("name,num_labels", CASES)
def test_head_matches_transformers_both_ways(name, num_labels, batch, tmp_path):
    torch.manual_seed(0)
    hf = getattr(transformers, name)(transformers.BertConfig(**TINY, num_labels=num_labels)).eval()
    hf.save_pretrained(tmp_path / "hf")
    bk = getattr(heads, name).from_pretrained(tmp_path / "hf")
    bk.save_pretrained(tmp_path / "bk")
    hf_again = getattr(transformers, name).from_pretrained(tmp_path / "bk").eval()
    hf_labels, bk_labels = make_labels(name, batch, num_labels)
    real = batch["attention_mask"]

    with torch.no_grad():
        ref = hf(**batch, **hf_labels)
        back = hf_again(**batch, **hf_labels)
        out = bk(**batch)  # no labels: full-length logits, no loss
        out_labelled = bk(**batch, **bk_labels)

    assert "loss" not in out
    for key, want in hf_logits(name, ref).items():
        per_token = want.dim() >= 2 and want.shape[1] == real.shape[1]
        mask = real if per_token else None
        assert max_diff(want, out[key], mask) <= TOL, key
        assert max_diff(want, hf_logits(name, back)[key], mask) <= TOL, key  # bertkit-saved file in HF
    assert abs(ref.loss.item() - out_labelled["loss"].item()) <= TOL
    assert abs(ref.loss.item() - back.loss.item()) <= TOL


def test_mlm_logits_at_masked_positions_are_the_full_logits_gathered(batch):
    torch.manual_seed(0)
    model = heads.BertForPreTraining(BertConfig(**TINY)).eval()
    positions = torch.tensor([[1, 3, 4]] * batch["input_ids"].shape[0])
    with torch.no_grad():
        full = model(**batch)["logits"]  # [batch, seq, vocab]
        some = model(**batch, masked_positions=positions)["logits"]  # [batch, 3, vocab]
    assert some.shape == (positions.shape[0], 3, TINY["vocab_size"])
    assert max_diff(full[:, [1, 3, 4]], some) <= TOL


def test_mlm_decoder_is_tied_to_word_embeddings(batch):
    model = heads.BertForPreTraining(BertConfig(**TINY))
    hf_labels, bk_labels = make_labels("BertForPreTraining", batch, 2)
    out = model(**batch, **bk_labels)
    out["loss"].backward()
    # The decoder is the embedding matrix: its gradient includes the output projection's,
    # so embedding rows of predicted-but-absent tokens get gradient too.
    grad = model.bert.embeddings.word_embeddings.weight.grad
    unseen = torch.ones(TINY["vocab_size"], dtype=torch.bool)
    unseen[batch["input_ids"].unique()] = False
    assert grad[unseen].abs().sum() > 0
    assert {"mlm_loss", "nsp_loss"} <= out.keys()
    assert torch.allclose(out["loss"], out["mlm_loss"] + out["nsp_loss"])


def test_masked_lm_labels_without_positions_is_an_error(batch):
    model = heads.BertForMaskedLM(BertConfig(**TINY))
    with pytest.raises(ValueError, match="masked_positions"):
        model(**batch, masked_lm_labels=torch.zeros(batch["input_ids"].shape[0], 3, dtype=torch.long))


def test_extra_batch_fields_are_ignored(batch):
    model = heads.BertForSequenceClassification(BertConfig(**TINY)).eval()
    with torch.no_grad():
        a = model(**batch)["logits"]
        b = model(**batch, example_index=torch.arange(batch["input_ids"].shape[0]))["logits"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["BertForPreTraining", "BertForSequenceClassification", "BertForQuestionAnswering"])
def test_heads_on_real_minilm_encoder(name, minilm, tmp_path):
    """The real encoder under each kind of head (pooled, per-token, MLM): transformers initialises
    the head, saves; bertkit loads and must agree on logits and loss."""
    torch.manual_seed(0)
    hf = getattr(transformers, name).from_pretrained(str(minilm)).eval()
    hf.save_pretrained(tmp_path)
    bk = getattr(heads, name).from_pretrained(tmp_path)
    for batch in sst2_batches(minilm, n_batches=2, batch_size=4, pairs=True):
        hf_labels, bk_labels = make_labels(name, batch, 2)
        with torch.no_grad():
            ref, out = hf(**batch, **hf_labels), bk(**batch, **bk_labels)
            plain = bk(**batch)
        for key, want in hf_logits(name, ref).items():
            per_token = want.dim() >= 2 and want.shape[1] == batch["input_ids"].shape[1]
            assert max_diff(want, plain[key], batch["attention_mask"] if per_token else None) <= TOL, key
        assert abs(ref.loss.item() - out["loss"].item()) <= TOL
