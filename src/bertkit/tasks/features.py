"""Examples -> model inputs for sentence(-pair) classification and token classification.

A feature is the dict `batching.collate` pads and stacks: input_ids,
token_type_ids, attention_mask and, when known, labels. Anything else a task
needs to map predictions back (which positions start a word) is kept in a
parallel list, not in the feature, so batches carry model inputs only.
"""

from __future__ import annotations

from collections.abc import Sequence

from bertkit.tasks.readers import TextExample, TokenExample


def _feature(ids: list[int], types: list[int] | None = None) -> dict:
    return {"input_ids": ids, "token_type_ids": types or [0] * len(ids), "attention_mask": [1] * len(ids)}


def text_features(examples: Sequence[TextExample], tokenizer, max_length: int = 128,
                  head_tail: tuple[int, int] | None = None) -> tuple[list[dict], list[bool]]:
    """Single sentences or pairs (segment ids 0/1), truncated longest-first to max_length ->
    (features, whether each example was cut).

    With `head_tail=(h, t)` a single text longer than max_length keeps its
    first h and last t word pieces (h + t + 2 == max_length): the start and the
    end of a review carry most of its sentiment.
    """
    if head_tail is not None and sum(head_tail) + 2 != max_length:
        raise ValueError(f"head_tail {head_tail} must add up to max_length - 2 = {max_length - 2}")
    features, cut = [], []
    for ex in examples:
        if head_tail is not None and ex.text_pair is None:
            ids = tokenizer.encode(ex.text, truncation=False).input_ids  # cut below
            cut.append(len(ids) > max_length)
            if cut[-1]:
                body = ids[1:-1]
                ids = ids[:1] + body[:head_tail[0]] + body[len(body) - head_tail[1]:] + ids[-1:]
            f = _feature(ids)
        else:
            # The cut-off tokens come back as one overflowing window: that says the input was cut.
            enc = tokenizer.encode(ex.text, ex.text_pair, max_length=max_length, truncation="longest_first",
                                   return_offsets=False, return_overflowing=True)
            cut.append(bool(enc.overflowing))
            f = _feature(list(enc.input_ids), list(enc.token_type_ids))
        if ex.label is not None:
            f["labels"] = ex.label
        features.append(f)
    return features, cut


def token_features(examples: Sequence[TokenExample], tokenizer, labels: Sequence[str],
                   max_length: int = 128) -> tuple[list[dict], list[list[int]], int]:
    """Word-level tags -> one label on each word's first word piece, -100 on the rest.

    Returns (features, word_starts, truncated): word_starts[i][w] is the
    position of word w's first piece in feature i. Words past max_length are
    left out of the feature (counted in `truncated`; predicted as "O").
    A word that yields no piece (a lone control character) becomes [UNK], so
    every word keeps a position.
    """
    label_id = {name: i for i, name in enumerate(labels)}
    unk = tokenizer.unk_token_id
    features, starts_all, truncated = [], [], 0
    for ex in examples:
        ids, labs, starts = [tokenizer.cls_token_id], [-100], []
        for w, word in enumerate(ex.words):
            pieces = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word)) or [unk]
            if len(ids) + len(pieces) > max_length - 1:
                truncated += len(ex.words) - w
                break
            starts.append(len(ids))
            tag = label_id[ex.tags[w]] if ex.tags is not None else -100
            labs += [tag] + [-100] * (len(pieces) - 1)
            ids += pieces
        ids.append(tokenizer.sep_token_id)
        labs.append(-100)
        f = _feature(ids)
        if ex.tags is not None:
            f["labels"] = labs
        features.append(f)
        starts_all.append(starts)
    return features, starts_all, truncated


def word_tags(pred_ids: Sequence[int], starts: Sequence[int], n_words: int, labels: Sequence[str]) -> list[str]:
    """Per-position predictions -> one tag per word (its first piece's); "O" past truncation."""
    tags = [labels[pred_ids[p]] for p in starts]
    return tags + ["O"] * (n_words - len(tags))
