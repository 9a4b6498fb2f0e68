"""Contextual embeddings: the same word gets a different vector in a different sense.

"bat" in two cricket sentences and one cave sentence, through all-MiniLM-L6-v2.
A static word embedding would give cosine 1.0 for every pair; BERT's last layer
puts the two cricket bats closer to each other than to the flying one.

    python examples/contextual_bat.py [model dir or name]   # default: sentence-transformers/all-MiniLM-L6-v2
"""

from __future__ import annotations

import sys

import torch

from bertkit.checkpoint import resolve
from bertkit.model import BertModel
from bertkit.tokenizer import Tokenizer

SENTENCES = {
    "cricket 1": "he walked out to the crease holding his bat and faced the first ball.",
    "cricket 2": "she swung the bat hard and hit the ball over the boundary for six.",
    "cave": "a bat flew out of the dark cave at dusk, hunting insects.",
}


def bat_vectors(model_name: str) -> dict[str, torch.Tensor]:
    """The last-layer vector of the token 'bat' in each sentence."""
    model_dir = resolve(model_name)  # a directory, an installed model package, or the offline HF cache
    tokenizer = Tokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir)
    bat = tokenizer.vocab["bat"]
    vectors = {}
    for name, text in SENTENCES.items():
        ids = tokenizer.encode(text).input_ids
        with torch.no_grad():
            hidden = model(torch.tensor([ids])).last_hidden_state[0]  # [seq, hidden]
        vectors[name] = hidden[ids.index(bat)]
    return vectors


def main() -> None:
    model_name = sys.argv[1] if len(sys.argv) > 1 else "sentence-transformers/all-MiniLM-L6-v2"
    v = bat_vectors(model_name)
    for a, b in [("cricket 1", "cricket 2"), ("cricket 1", "cave"), ("cricket 2", "cave")]:
        cos = torch.nn.functional.cosine_similarity(v[a], v[b], dim=0).item()
        print(f"cos({a}, {b}): {cos:.4f}")


if __name__ == "__main__":
    main()
