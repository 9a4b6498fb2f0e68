"""The BERT network (Devlin et al. 2018), written out in one file; it imports only config and torch.

embeddings (word + position + segment, LayerNorm) -> N x Block -> pooler.
Each Block is post-LN as in the original: x = LN(x + attn(x)); x = LN(x + mlp(x)).
Parameter names are bertkit's own; checkpoint.py maps them to and from
Hugging Face's names (including splitting the fused QKV projection), and heads.py
makes the loadable models (BertModel, the task heads) on top of `Bert`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertkit.config import BertConfig

ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU, BERT's
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act {name!r} is not supported; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class ModelOutput(dict):
    """Outputs as transformers gives them: by name (out["logits"]), by attribute (out.logits) and by
    position (out[0]: the first value that is not None, in the order the model lists them).

    Values that are None are left out, so `"loss" in out` says whether a loss was computed;
    reading a declared field that is absent gives None.
    """

    fields: tuple[str, ...] = ()

    def __init__(self, **values):
        super().__init__((k, v) for k, v in values.items() if v is not None)

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return tuple(self.values())[key]
        return super().__getitem__(key)

    def __getattr__(self, name: str):
        if name in self:
            return self[name]
        if name in type(self).fields:
            return None
        raise AttributeError(f"{type(self).__name__} has no output {name!r} (has {', '.join(self)})")

    def to_tuple(self) -> tuple:
        return tuple(self.values())


class BertOutput(ModelOutput):
    """last_hidden_state [batch, seq, hidden]; pooler_output [batch, hidden] (absent without a pooler);
    hidden_states: embeddings + each layer (num_layers + 1); attentions: each layer [batch, heads, seq, seq]."""

    fields = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, with a cheaper random mask on CPU.

    torch's CPU dropout draws one random number per element (bernoulli_), a
    visible share of a pre-training step on the attention probabilities. Here each
    element gets 16 of the bits of one 64-bit draw, so the generator is called a
    quarter as often (BENCHMARKS.md, Pre-training). The drop rate is
    therefore p rounded to a multiple of 1/65536 (0.1 -> 0.1000061), and the
    scale uses that exact keep rate, so the expected output still equals x.
    Other devices keep torch's fused kernel.
    """
    threshold = round((1.0 - p) * 65536)  # keep when the 16 bits, read unsigned, are below this
    if not training or threshold == 65536:
        return x
    if x.device.type != "cpu" or threshold == 0:
        return F.dropout(x, p, training=True)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # every bit uniform
    keep = (bits.view(torch.int16)[:n] < threshold - 32768).view(x.shape)
    return torch.where(keep, x, 0.0).mul_(65536 / threshold)  # autograd keeps the bool mask: 1 byte an element


class Dropout(nn.Dropout):
    """nn.Dropout through the cheaper CPU mask above (same p, same train/eval switch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        seq = input_ids.shape[1]
        if seq > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence length {seq} exceeds max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}")
        x = self.word_embeddings(input_ids)  # [batch, seq, hidden]
        # Positions are the same for every row: broadcast [seq, hidden] over the batch.
        x = x + self.position_embeddings.weight[:seq]
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.n_head = config.num_attention_heads
        self.head_size = config.head_size
        # Query, key and value in one matmul; checkpoint.py splits it for Hugging Face.
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout_p = config.attention_probs_dropout_prob  # a probability: SDPA or dropout() applies it
        self.resid_dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """mask: [batch, 1, 1, seq] additive (0 keep, -inf-ish drop) or None for no padding."""
        b, s, h = x.shape
        qkv = self.qkv(x).view(b, s, 3, self.n_head, self.head_size)  # [batch, seq, 3, heads, head_size]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, seq, head_size]
        p = self.attn_dropout_p if self.training else 0.0
        # SDPA's fused kernels have no dropout on CPU (it falls back to this same
        # math with torch's slower mask), so CPU training takes the explicit path.
        if output_attentions or (p > 0.0 and x.device.type == "cpu"):
            scores = (q @ k.transpose(-2, -1)) * self.head_size ** -0.5  # [batch, heads, seq, seq]
            if mask is not None:
                scores = scores + mask
            probs = scores.softmax(dim=-1)
            y = dropout(probs, p, self.training) @ v
            probs = probs if output_attentions else None
        else:
            probs = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, s, h)  # [batch, seq, hidden]
        return self.resid_dropout(self.proj(y)), probs


class MLP(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))  # [batch, seq, intermediate] inside


class Block(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, probs = self.attn(x, mask, output_attentions)
        x = self.attn_norm(x + a)  # post-LN, as in the original BERT
        x = self.mlp_norm(x + self.mlp(x))
        return x, probs


class Pooler(nn.Module):
    """dense + tanh on the [CLS] vector: the sentence representation NSP was trained on."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))  # [batch, hidden]


def extended_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """[batch, seq] of 1 (token) / 0 (padding) -> additive [batch, 1, 1, seq], or None if nothing is padded.

    Additive with the dtype's minimum rather than -inf: a row that is all padding
    then gives a uniform softmax instead of NaN. Returning None when there is no
    padding lets SDPA take its fastest unmasked kernel; a traced graph (ONNX export)
    or a compiled one must serve every batch, so it always masks.
    """
    if attention_mask is None:
        return None
    if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and bool(attention_mask.all()):
        return None
    keep = attention_mask[:, None, None, :].to(torch.bool)
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, torch.finfo(dtype).min)


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std) weights, zero biases, identity LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Bert(nn.Module):
    """The encoder network: input ids -> contextual vectors (+ pooled [CLS]).

    Pure network, no file I/O: `heads.BertModel` is this plus from_pretrained/save_pretrained.
    """

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.pooler = Pooler(config) if add_pooling_layer else None
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> BertOutput:
        x = self.embeddings(input_ids, token_type_ids)  # [batch, seq, hidden]
        mask = extended_mask(attention_mask, x.dtype)
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for block in self.layers:
            x, probs = block(x, mask, output_attentions)
            if output_hidden_states:
                hidden_states.append(x)
            if output_attentions:
                attentions.append(probs)
        return BertOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(x) if self.pooler is not None else None,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
