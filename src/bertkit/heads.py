"""The loadable models: BertModel (the encoder) and the task heads on top of it.

Each is model.Bert (the network) plus a head, with from_pretrained / save_pretrained from
checkpoint.PretrainedMixin. Called as `model(**batch)`, a head returns a ModelOutput: "loss"
(first, when the batch carries labels), "logits", then what else the head computes. Label names
(see batching.collate): sequence classification `labels` [batch]; token
classification `labels` [batch, seq] (-100 ignored); QA `start_positions`,
`end_positions` [batch]; pre-training `masked_positions` + `masked_lm_labels`
[batch, max_pred] and `next_sentence_label` [batch].
Extra batch fields a head does not use are accepted and ignored, so one
collated batch dict can carry bookkeeping (e.g. example indices) alongside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertkit.checkpoint import PretrainedMixin
from bertkit.config import BertConfig
from bertkit.model import Bert, Dropout, ModelOutput, activation, init_weights


class BertModel(PretrainedMixin, Bert):
    """The encoder with loading and saving: `BertModel.from_pretrained(name)(**inputs).last_hidden_state`."""


class BertHead(PretrainedMixin, nn.Module):
    """Shared base of the heads: the config, and the network under `bert.` (Hugging Face's prefix)."""

    base_prefix = "bert."

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.bert = Bert(config, add_pooling_layer=add_pooling_layer)

    def classifier_dropout(self) -> Dropout:
        p = self.config.classifier_dropout
        return Dropout(p if p is not None else self.config.hidden_dropout_prob)


class MLMHead(nn.Module):
    """dense + act + LayerNorm, then a decoder tied to the word embeddings, plus a per-token bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.act(self.dense(x)))
        return F.linear(x, word_embeddings, self.bias)  # [..., vocab]


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [batch, seq, hidden], positions [batch, n] -> [batch, n, hidden]."""
    return torch.gather(x, 1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class _MLMMixin:
    """MLM logits and loss, shared by BertForPreTraining and BertForMaskedLM."""

    bert: Bert
    mlm: MLMHead

    def mlm_outputs(self, x: torch.Tensor, masked_positions: torch.Tensor | None,
                    masked_lm_labels: torch.Tensor | None,
                    labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits at masked_positions [batch, max_pred, vocab] when given (the vocab
        projection is most of an MLM step, so skip the ~85% unmasked tokens), else at
        every position [batch, seq, vocab]. Loss from masked_lm_labels or full-length labels."""
        if masked_positions is not None:
            x = gather_positions(x, masked_positions)  # [batch, max_pred, hidden]
            labels = masked_lm_labels
        elif masked_lm_labels is not None:
            raise ValueError("masked_lm_labels needs masked_positions")
        logits = self.mlm(x, self.bert.embeddings.word_embeddings.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return logits, loss


class BertForPreTraining(_MLMMixin, BertHead):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.mlm = MLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2)
        init_weights(self.mlm.dense, config.initializer_range)
        init_weights(self.nsp, config.initializer_range)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, masked_positions=None,
                masked_lm_labels=None, next_sentence_label=None, labels=None, **_unused) -> dict:
        out = self.bert(input_ids, token_type_ids, attention_mask)
        logits, mlm_loss = self.mlm_outputs(out.last_hidden_state, masked_positions, masked_lm_labels, labels)
        nsp_logits = self.nsp(out.pooler_output)  # [batch, 2]; 0 = B follows A, 1 = random B
        nsp_loss = None if next_sentence_label is None else \
            F.cross_entropy(nsp_logits, next_sentence_label.reshape(-1))
        losses = [x for x in (mlm_loss, nsp_loss) if x is not None]
        return ModelOutput(loss=sum(losses) if losses else None, logits=logits, nsp_logits=nsp_logits,
                           mlm_loss=mlm_loss, nsp_loss=nsp_loss)


class BertForMaskedLM(_MLMMixin, BertHead):
    def __init__(self, config: BertConfig):
        super().__init__(config, add_pooling_layer=False)
        self.mlm = MLMHead(config)
        init_weights(self.mlm.dense, config.initializer_range)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, masked_positions=None,
                masked_lm_labels=None, labels=None, **_unused) -> dict:
        out = self.bert(input_ids, token_type_ids, attention_mask)
        logits, loss = self.mlm_outputs(out.last_hidden_state, masked_positions, masked_lm_labels, labels)
        return ModelOutput(loss=loss, logits=logits)


class BertForNextSentencePrediction(BertHead):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.nsp = nn.Linear(config.hidden_size, 2)
        init_weights(self.nsp, config.initializer_range)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, next_sentence_label=None,
                labels=None, **_unused) -> dict:
        logits = self.nsp(self.bert(input_ids, token_type_ids, attention_mask).pooler_output)  # [batch, 2]
        labels = next_sentence_label if next_sentence_label is not None else labels
        loss = None if labels is None else F.cross_entropy(logits, labels.reshape(-1))
        return ModelOutput(loss=loss, logits=logits)


class BertForSequenceClassification(BertHead):
    """Classifier on the pooled [CLS]; num_labels == 1 is regression (MSE), as in Hugging Face."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dropout = self.classifier_dropout()
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, **_unused) -> dict:
        pooled = self.bert(input_ids, token_type_ids, attention_mask).pooler_output
        logits = self.classifier(self.dropout(pooled))  # [batch, num_labels]
        if labels is None:
            return ModelOutput(logits=logits)
        problem = self.config.problem_type
        if problem is None:  # Hugging Face's rule
            if self.config.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).reshape(-1)) \
                if self.config.num_labels == 1 else F.mse_loss(logits, labels.to(logits.dtype))
        elif problem == "single_label_classification":
            loss = F.cross_entropy(logits, labels.reshape(-1).long())
        elif problem == "multi_label_classification":
            loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        else:
            raise ValueError(f"unknown problem_type {problem!r}")
        return ModelOutput(loss=loss, logits=logits)


class BertForTokenClassification(BertHead):
    def __init__(self, config: BertConfig):
        super().__init__(config, add_pooling_layer=False)
        self.dropout = self.classifier_dropout()
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, **_unused) -> dict:
        x = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state
        logits = self.classifier(self.dropout(x))  # [batch, seq, num_labels]
        loss = None if labels is None else \
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return ModelOutput(loss=loss, logits=logits)


class BertForQuestionAnswering(BertHead):
    """Extractive QA: a start and an end score per token."""

    def __init__(self, config: BertConfig):
        super().__init__(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        init_weights(self.qa_outputs, config.initializer_range)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, start_positions=None,
                end_positions=None, **_unused) -> dict:
        x = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state
        logits = self.qa_outputs(x)  # [batch, seq, 2]
        start_logits, end_logits = logits.unbind(-1)  # each [batch, seq]
        loss = None
        if start_positions is not None and end_positions is not None:
            # Answers cut off by truncation point past the end: clamp there and ignore, as Hugging Face does.
            seq = start_logits.shape[1]
            start = start_positions.reshape(-1).clamp(0, seq)
            end = end_positions.reshape(-1).clamp(0, seq)
            loss = (F.cross_entropy(start_logits, start, ignore_index=seq)
                    + F.cross_entropy(end_logits, end, ignore_index=seq)) / 2
        return ModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits, logits=logits)


MODEL_CLASSES = {cls.__name__: cls for cls in (
    BertModel, BertForPreTraining, BertForMaskedLM, BertForNextSentencePrediction,
    BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering)}


def model_class(config: BertConfig, source: str = "config.json") -> type[PretrainedMixin]:
    """The class config.json names in `architectures` (BertModel when it names none)."""
    names = config.extra.get("architectures") or ["BertModel"]
    if names[0] not in MODEL_CLASSES:
        raise ValueError(f"{source}: architecture {names[0]!r} is not one bertkit builds "
                         f"({', '.join(MODEL_CLASSES)})")
    return MODEL_CLASSES[names[0]]
