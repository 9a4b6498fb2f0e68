import torch

from bertkit.batching import Batches, collate, length_batches


def test_sorted_batches_cover_every_index_once_longest_first():
    lengths = [5, 1, 9, 3, 7, 2, 8]
    batches = length_batches(lengths, 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_shuffled_batches_are_deterministic_per_seed_and_local_in_length():
    lengths = [i % 97 for i in range(1000)]
    a = length_batches(lengths, 8, shuffle=True, seed=1)
    b = length_batches(lengths, 8, shuffle=True, seed=1)
    c = length_batches(lengths, 8, shuffle=True, seed=2)
    assert a == b and a != c
    assert sorted(i for x in a for i in x) == list(range(1000))
    # Within a bucket-sorted batch the spread of lengths is small.
    spread = sum(max(lengths[i] for i in x) - min(lengths[i] for i in x) for x in a) / len(a)
    assert spread < 10


def test_collate_pads_each_field_with_its_own_value():
    feats = [
        {"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "labels": [-100, 3, -100], "label": 1, "score": 0.5},
        {"input_ids": [101, 102], "attention_mask": [1, 1], "labels": [-100, -100], "label": 0, "score": 1.0},
    ]
    b = collate(feats)
    assert b["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["labels"].tolist() == [[-100, 3, -100], [-100, -100, -100]]
    assert b["label"].dtype == torch.long and b["score"].dtype == torch.float


def test_batches_iterate_in_sorted_order_and_reshuffle_per_epoch():
    feats = [{"input_ids": [1] * n} for n in (3, 1, 2, 5, 4)]
    assert [b["input_ids"].shape[1] for b in Batches(feats, 2)] == [5, 3, 1]
    feats = [{"input_ids": [1] * (1 + n % 7)} for n in range(40)]
    shuf = Batches(feats, 4, shuffle=True)
    first = shuf.index_batches()
    shuf.set_epoch(1)
    second = shuf.index_batches()
    assert second != first  # a new order each epoch...
    assert sorted(i for b in first for i in b) == sorted(i for b in second for i in b) == list(range(40))  # ...of all
    shuf.set_epoch(0)
    assert shuf.index_batches() == first  # and the same order for the same epoch (resuming relies on it)
    assert [len(b["input_ids"]) for b in shuf] == [len(b) for b in first]


def test_inference_batches_bound_their_padding():
    from bertkit.batching import padding_bounded_batches

    assert padding_bounded_batches([256, 250, 12, 11, 10, 9, 8], 32) == [[0, 1, 2, 3], [4, 5, 6]]
    assert [len(b) for b in padding_bounded_batches([10] * 70, 32)] == [32, 32, 6]  # equal lengths: by count alone
    lengths = [256 if i % 10 == 0 else 13 for i in range(100)]
    batches = padding_bounded_batches(lengths, 32)
    assert sorted(i for b in batches for i in b) == list(range(100))
    for b in batches:
        assert len(b) <= 32 and [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
        assert len(b) == 1 or lengths[b[0]] * len(b) <= 2 * sum(lengths[i] for i in b)
