"""BertModel against transformers' BertModel: every output, on padded batches of real sentences.

Padded positions: with the same weights both implementations compute the same
(meaningless) vectors there, but we compare hidden states only at real tokens,
which is all that is defined; pooled output and attention maps are compared whole.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertkit.config import BertConfig
from bertkit.heads import BertModel
from bertkit.model import dropout
from conftest import ROOT, data_path

transformers = pytest.importorskip("transformers")

TOL = 1e-5
# Attention probabilities come out of a softmax over scores of magnitude ~10-30, which scales the
# hidden states' float32 rounding differences (fused vs separate QKV matmuls) up: measured up to
# 2.1e-5 in the fifth layer of MiniLM on an AVX-512 CPU (within 1e-5 on AVX2).
ATTENTION_TOL = 5e-5


def sst2_sentences(n: int) -> list[str]:
    """The first n SST-2 dev sentences (real text, varied lengths)."""
    lines = data_path("glue", "SST-2", "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0].strip() for line in lines[:n]]


def sst2_batches(model_dir: Path, n_batches: int = 3, batch_size: int = 8, pairs: bool = False) -> list[dict]:
    """Padded batches of real SST-2 sentences (pairs: consecutive sentences as A/B), tokenized by
    transformers' tokenizer: it only generates inputs here (tokenizer parity is tested elsewhere)."""
    tok = transformers.BertTokenizerFast.from_pretrained(str(model_dir))
    texts = sst2_sentences(n_batches * batch_size * (2 if pairs else 1))
    batches = []
    for b in range(n_batches):
        if pairs:
            chunk = texts[2 * b * batch_size: 2 * (b + 1) * batch_size]
            enc = tok(chunk[0::2], chunk[1::2], padding=True, return_tensors="pt")
        else:
            enc = tok(texts[b * batch_size: (b + 1) * batch_size], padding=True, return_tensors="pt")
        assert not bool(enc["attention_mask"].all()), "test batch should contain padding"
        batches.append(dict(enc))
    return batches


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    return (a - b).abs().max().item()


def assert_same_outputs(hf_model, bk_model, batch: dict) -> None:
    with torch.no_grad():
        ref = hf_model(**batch, output_hidden_states=True, output_attentions=True)
        out = bk_model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                       output_hidden_states=True, output_attentions=True)
        fast = bk_model(**batch)  # SDPA path, no attention maps
    mask = batch["attention_mask"]
    assert max_diff(ref.last_hidden_state, out.last_hidden_state, mask) <= TOL
    assert max_diff(ref.last_hidden_state, fast.last_hidden_state, mask) <= TOL
    assert max_diff(ref.pooler_output, out.pooler_output) <= TOL
    assert max_diff(ref.pooler_output, fast.pooler_output) <= TOL
    assert len(out.hidden_states) == len(ref.hidden_states) == bk_model.config.num_hidden_layers + 1
    for r, o in zip(ref.hidden_states, out.hidden_states):
        assert max_diff(r, o, mask) <= TOL
    assert len(out.attentions) == len(ref.attentions) == bk_model.config.num_hidden_layers
    for r, o in zip(ref.attentions, out.attentions):
        assert r.shape == o.shape
        assert max_diff(r, o) <= ATTENTION_TOL
    assert fast.hidden_states is None and fast.attentions is None


def test_tiny_random_matches_transformers(tmp_path, minilm):
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=512,
                                        attn_implementation="eager")
    hf = transformers.BertModel(hf_config).eval()
    hf.save_pretrained(tmp_path)
    bk = BertModel.from_pretrained(tmp_path)
    for batch in sst2_batches(minilm, n_batches=2, pairs=True):
        assert_same_outputs(hf, bk, batch)


def test_minilm_matches_transformers(minilm):
    # Eager attention so transformers returns attention maps.
    hf = transformers.BertModel.from_pretrained(str(minilm), attn_implementation="eager").eval()
    bk = BertModel.from_pretrained(minilm)
    for batch in sst2_batches(minilm, n_batches=2):
        assert_same_outputs(hf, bk, batch)


def test_minilm_matches_transformers_sdpa_on_pairs(minilm):
    hf = transformers.BertModel.from_pretrained(str(minilm), attn_implementation="sdpa").eval()
    bk = BertModel.from_pretrained(minilm)
    for batch in sst2_batches(minilm, n_batches=2, pairs=True):
        with torch.no_grad():
            ref, out = hf(**batch), bk(**batch)
        assert max_diff(ref.last_hidden_state, out.last_hidden_state, batch["attention_mask"]) <= TOL
        assert max_diff(ref.pooler_output, out.pooler_output) <= TOL


def test_mean_pooled_minilm_matches_sentence_transformers(minilm, monkeypatch):
    st = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = st.SentenceTransformer(str(minilm), device="cpu")
    texts = sst2_sentences(16)
    want = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    bk = BertModel.from_pretrained(minilm)
    batch = dict(transformers.BertTokenizerFast.from_pretrained(str(minilm))(texts, padding=True,
                                                                              return_tensors="pt"))
    with torch.no_grad():
        h = bk(**batch).last_hidden_state  # [batch, seq, hidden]
    m = batch["attention_mask"].unsqueeze(-1).float()
    got = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    cos = (got * want).sum(-1)
    assert cos.min().item() >= 0.99999


def test_padding_does_not_change_real_tokens(minilm):
    """A sentence alone and the same sentence padded inside a batch give the same vectors."""
    bk = BertModel.from_pretrained(minilm)
    batch = sst2_batches(minilm, n_batches=1)[0]
    with torch.no_grad():
        together = bk(**batch).last_hidden_state
        for i in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][i].sum())
            alone = bk(batch["input_ids"][i:i + 1, :n]).last_hidden_state[0]
            assert max_diff(alone, together[i, :n]) <= TOL


def aten_ops(fn) -> set[str]:
    """Names of the aten operators fn runs (kernel level: also sees what SDPA does inside)."""
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_eval_forward_never_materialises_attention_probs():
    model = BertModel(BertConfig.preset("tiny", vocab_size=100)).eval()
    ids = torch.randint(1, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ops = aten_ops(lambda: model(ids, attention_mask=mask))
    assert "aten::scaled_dot_product_attention" in ops
    assert "aten::_softmax" not in ops  # a fused kernel, not SDPA's math fallback
    assert "aten::_softmax" in aten_ops(lambda: model(ids, attention_mask=mask, output_attentions=True))
    out = model(ids, attention_mask=mask, output_attentions=True)
    # Padded keys get no attention; each row is a distribution.
    assert out.attentions[0][1, :, :, 5:].abs().max().item() == 0.0
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(()), atol=1e-6)


def test_dropout_only_in_training_and_gradients_flow():
    torch.manual_seed(0)
    model = BertModel(BertConfig.preset("tiny", vocab_size=100))
    ids = torch.randint(1, 100, (2, 7))
    ids[1, 5:] = 0  # padding token
    mask = (ids != 0).long()
    model.train()
    a, b = model(ids, attention_mask=mask).pooler_output, model(ids, attention_mask=mask).pooler_output
    assert not torch.equal(a, b)
    a.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["embeddings.word_embeddings.weight"][0].abs().max().item() == 0.0  # pad row frozen
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).pooler_output,
                           model(ids, attention_mask=mask).pooler_output)


def test_cpu_dropout_rate_scale_gradient_and_seed():
    x = torch.ones(1000, 1000, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    # 10^6 draws: the drop rate is 0.1 (to 1/65536) within 5 standard deviations (5 * 0.0003).
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.0015
    assert abs(y.mean().item() - 1.0) < 0.005  # the scale keeps the expectation
    assert torch.allclose(y[kept], torch.full((), 65536 / 58982))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(sum)/dx = mask * scale
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.1, training=True), y)  # the seed decides the mask
    assert dropout(x, 0.1, training=False) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    rows = dropout(torch.ones(4, 100_000), 0.5, training=True)
    assert not any(torch.equal(rows[i] != 0, rows[j] != 0) for i in range(4) for j in range(i))


def test_training_attention_path_equals_sdpa_when_nothing_is_dropped():
    # In CPU training the attention is computed explicitly (for the cheaper dropout mask);
    # with a drop rate that rounds to 0 its output must equal the fused eval path.
    config = BertConfig.preset("tiny", vocab_size=100, hidden_dropout_prob=0.0, attention_probs_dropout_prob=1e-9)
    model = BertModel(config)
    ids = torch.randint(1, 100, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    train_ops = aten_ops(lambda: model.train()(ids, attention_mask=mask))
    assert "aten::_softmax" in train_ops
    with torch.no_grad():
        train = model.train()(ids, attention_mask=mask)
        infer = model.eval()(ids, attention_mask=mask)
    real = mask.bool()
    assert (train.last_hidden_state[real] - infer.last_hidden_state[real]).abs().max().item() < 1e-5


def test_too_long_input_is_a_clear_error():
    model = BertModel(BertConfig.preset("tiny", vocab_size=100, max_position_embeddings=8))
    with pytest.raises(ValueError, match="max_position_embeddings 8"):
        model(torch.ones(1, 9, dtype=torch.long))


def test_contextual_bat_example(minilm):
    """examples/contextual_bat.py: 'bat' gets a different vector in a cricket and a cave sentence."""
    pytest.importorskip("bertkit.tokenizer")  # the example uses bertkit's own tokenizer
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "contextual_bat.py"), str(minilm)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    cos = dict(line.split(": ") for line in result.stdout.splitlines() if line.startswith("cos("))
    cricket_cricket = float(cos["cos(cricket 1, cricket 2)"])
    cricket_cave = float(cos["cos(cricket 1, cave)"])
    assert cricket_cave < 0.9  # same word, different meaning: noticeably different vectors
    assert cricket_cricket > cricket_cave
    assert cricket_cricket > float(cos["cos(cricket 2, cave)"])


def test_bf16_weights_and_autocast_run_close_to_fp32(minilm):
    model = BertModel.from_pretrained(minilm)
    batch = sst2_batches(minilm, n_batches=1)[0]
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        want = model(**batch).last_hidden_state[real]  # [tokens, hidden]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(**batch).last_hidden_state[real].float()
        model.to(torch.bfloat16)
        bf16 = model(**batch).last_hidden_state[real].float()
    for got in (autocast, bf16):
        assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min().item() > 0.99
