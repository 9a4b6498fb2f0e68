"""Next-sentence-prediction instances, as Google's create_pretraining_data.py makes them.

Each document's sentences are packed greedily into segment pairs that fill `max_seq_length`
(or, with probability `short_seq_prob`, a shorter random target, so the model also sees short
inputs). A is a run of whole sentences; B is the rest of the chunk (IsNext) or, half of the time,
a run of sentences from another document (NotNext, whose unused sentences are put back).
Masking is NOT done here: it happens at batch time, differently every epoch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bertkit.data.corpus import CorpusStats

Document = list[list[int]]  # sentences as word-piece ids, no special tokens


@dataclass
class Instance:
    tokens_a: list[int]
    tokens_b: list[int]
    is_random_next: bool  # NSP label: 1 = B is a random sentence run (NotNext), 0 = B follows A


def tokenize_document(sentences: list[str], tokenizer, max_num_tokens: int, stats: CorpusStats) -> Document:
    """Word-piece ids per sentence. Empty results are dropped, over-long ones cut into halves of a sequence."""
    doc: Document = []
    piece = max(1, max_num_tokens // 2)  # two pieces still fit one sequence as A and B
    for s in sentences:
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(s))
        if not ids:
            stats.empty_sentences += 1
        elif len(ids) > max_num_tokens:
            stats.long_sentences += 1
            doc.extend(ids[i:i + piece] for i in range(0, len(ids), piece))
        else:
            doc.append(ids)
    return doc


def truncate_seq_pair(a: list[int], b: list[int], max_num_tokens: int, rng: random.Random) -> None:
    """Trim the longer segment, from the front or the back at random, until the pair fits."""
    while len(a) + len(b) > max_num_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def document_instances(documents: list[Document], index: int, max_seq_length: int, short_seq_prob: float,
                       rng: random.Random) -> list[Instance]:
    """All instances of documents[index]; the other documents supply random B segments."""
    document = documents[index]
    max_num_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    instances: list[Instance] = []
    chunk: list[list[int]] = []
    length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [t for s in chunk[:a_end] for t in s]
            tokens_b: list[int] = []
            is_random_next = len(chunk) == 1 or rng.random() < 0.5
            if is_random_next:
                target_b = target - len(tokens_a)
                other = index
                for _ in range(10):  # another document, unless there is only this one
                    other = rng.randint(0, len(documents) - 1)
                    if other != index:
                        break
                random_doc = documents[other]
                for s in random_doc[rng.randint(0, len(random_doc) - 1):]:
                    tokens_b.extend(s)
                    if len(tokens_b) >= target_b:
                        break
                i -= len(chunk) - a_end  # the unused sentences start the next chunk
            else:
                tokens_b = [t for s in chunk[a_end:] for t in s]
            truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
            instances.append(Instance(tokens_a, tokens_b, is_random_next))
            chunk, length = [], 0
        i += 1
    return instances
