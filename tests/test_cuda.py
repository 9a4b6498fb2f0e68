"""The CUDA path: the encoder against transformers on the GPU, SDPA's fused kernels, bf16 autocast and
fp16 with a grad scaler in the engine, the prefetching loader, the Embedder, and NCCL under torchrun.

Skipped on machines without a CUDA device (CI has none); run on a GPU with
`pytest tests/test_cuda.py`. The parts that need no GPU (the prefetcher, the errors) are
tested in test_train.py and test_infer.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.batching import collate
from bertkit.config import BertConfig
from bertkit.heads import BertForPreTraining, BertModel
from bertkit.infer import Embedder
from bertkit.tokenizer import SPECIAL_TOKENS, Tokenizer
from bertkit.train import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
CUDA = torch.device("cuda")
WORDS = "the a cat dog sat on mat ran to park bat cave cricket ball night flew hit over and".split()


def padded_batch(vocab: int, lengths: list[int], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    feats = [{"input_ids": torch.randint(5, vocab, (n,), generator=g).tolist(), "attention_mask": [1] * n,
              "token_type_ids": [0] * (n // 2) + [1] * (n - n // 2)} for n in lengths]
    return collate(feats)


def pretraining_batch(vocab: int, batch: int = 8, seq: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    pos = torch.stack([torch.randperm(seq - 2, generator=g)[:10].sort().values + 1 for _ in range(batch)])
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids),
            "masked_positions": pos, "masked_lm_labels": torch.gather(ids, 1, pos),
            "next_sentence_label": torch.randint(0, 2, (batch,), generator=g)}


def on(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def test_encoder_on_cuda_matches_transformers_and_the_cpu(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bk = BertModel(BertConfig.preset("mini", vocab_size=1000)).eval()
    bk.save_pretrained(tmp_path)
    hf = transformers.BertModel.from_pretrained(tmp_path).eval().to(CUDA)
    batch = padded_batch(1000, [37, 64, 5, 50])
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        cpu = bk(**batch).last_hidden_state
        gpu = bk.to(CUDA)(**on(batch, CUDA)).last_hidden_state.cpu()
        ref = hf(**on(batch, CUDA)).last_hidden_state.cpu()
    assert (gpu - cpu)[mask].abs().max().item() < 1e-4
    assert (gpu - ref)[mask].abs().max().item() < 1e-4


def cuda_kernels(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_runs_a_fused_sdpa_kernel_with_padding_and_dropout(dtype):
    torch.manual_seed(0)
    model = BertModel(BertConfig.preset("mini", vocab_size=1000)).to(CUDA, dtype)
    batch = on(padded_batch(1000, [128, 90, 17, 128]), CUDA)
    model.eval()
    with torch.no_grad():
        ops = cuda_kernels(lambda: model(**batch))
    fused = {"aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention",
             "aten::_scaled_dot_product_cudnn_attention"}
    assert ops & fused, sorted(o for o in ops if "scaled_dot" in o)
    assert "aten::_softmax" not in ops  # not the math fallback
    model.train()  # attention dropout too goes through a fused kernel on the GPU
    ops = cuda_kernels(lambda: model(**batch).last_hidden_state.float().sum().backward())
    assert ops & fused and "aten::_softmax" not in ops, sorted(o for o in ops if "scaled_dot" in o)


def test_bf16_autocast_pretraining_loss_and_gradients_close_to_fp32():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset("mini", vocab_size=1000)).to(CUDA).eval()
    batch = on(pretraining_batch(1000), CUDA)
    loss32 = model(**batch)["loss"]
    loss32.backward()
    g32 = model.bert.embeddings.word_embeddings.weight.grad.clone()
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss16 = model(**batch)["loss"]
    loss16.backward()
    g16 = model.bert.embeddings.word_embeddings.weight.grad
    assert loss16.dtype == torch.float32  # the losses are computed in fp32 under autocast
    assert abs(loss16.item() - loss32.item()) / loss32.item() < 0.01
    assert torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0).item() > 0.99


class IndexedBatches:
    """An indexable batch source (like the pre-training loader): batch i depends on (epoch, i) alone."""

    def __init__(self, n: int = 24, vocab: int = 1000):
        self.n, self.vocab, self.epoch = n, vocab, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return pretraining_batch(self.vocab, seed=1000 * self.epoch + i)


@pytest.mark.parametrize("mixed_precision", ["no", "bf16", "fp16"])
def test_engine_trains_on_cuda(mixed_precision, tmp_path):
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset("mini", vocab_size=1000))
    cfg = TrainConfig(lr=1e-3, warmup=4, epochs=2, mixed_precision=mixed_precision, log_every=1, progress=False,
                      device="cuda", out_dir=str(tmp_path))
    res = train(model, IndexedBatches(), cfg)
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert len(losses) == 48 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.5  # it learns (the MLM targets repeat each epoch)
    assert next(model.parameters()).device.type == "cuda"


NCCL_WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    from test_cuda import IndexedBatches
    from bertkit.config import BertConfig
    from bertkit.heads import BertForPreTraining
    from bertkit.train import TrainConfig, train
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset("mini", vocab_size=1000, hidden_dropout_prob=0.0,
                                                 attention_probs_dropout_prob=0.0))
    train(model, IndexedBatches(), TrainConfig(lr=1e-3, warmup=4, epochs=1, log_every=1, progress=False,
                                               out_dir={out!r}))
    assert torch.distributed.is_available()
""")


def test_nccl_ddp_under_torchrun_matches_a_plain_run(tmp_path):
    """One rank per GPU (NCCL refuses two ranks on one device): on a 1-GPU machine this checks the
    NCCL process group, DDP's gradient all-reduce and the rank bookkeeping against a plain run."""
    n = torch.cuda.device_count()
    script = tmp_path / "worker.py"
    script.write_text(NCCL_WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path / "ddp")))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--standalone",
                        str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, NCCL_DEBUG="INFO"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "backend nccl" in r.stdout, r.stdout[-2000:]
    assert "NCCL INFO" in r.stdout + r.stderr  # NCCL_DEBUG=INFO: NCCL itself ran (communicator set up)
    ddp = [json.loads(x)["loss"] for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
           if '"loss"' in x]
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset("mini", vocab_size=1000, hidden_dropout_prob=0.0,
                                                 attention_probs_dropout_prob=0.0))
    one = train(model, IndexedBatches(), TrainConfig(lr=1e-3, warmup=4, epochs=1, log_every=1, progress=False,
                                                     grad_accum_steps=n, device="cuda"))
    one = [r["loss"] for r in one.history if "loss" in r]
    assert len(ddp) == len(one) == 24 // n
    np.testing.assert_allclose(ddp, one, rtol=1e-4)


def test_embedder_on_cuda_matches_the_cpu(tmp_path):
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *WORDS])}
    tok = Tokenizer(vocab)
    torch.manual_seed(0)
    model = BertModel(BertConfig.preset("tiny", vocab_size=len(vocab)))
    texts = ["the cat sat on the mat", "a bat flew over the cave at night", "hit the ball", "dog"]
    cpu = Embedder(model, tok)(texts, batch_size=2)
    gpu = Embedder(model, tok, device="cuda")(texts, batch_size=2)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
    bf16 = Embedder(model, tok, device="cuda", dtype="bf16")(texts, batch_size=2)
    cos = (bf16 * cpu).sum(1) / np.linalg.norm(bf16, axis=1) / np.linalg.norm(cpu, axis=1)
    assert cos.min() > 0.99
