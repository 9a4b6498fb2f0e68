"""Contextual embeddings: the same word gets a different vector in a different sense.

"bat" in two cricket sentences and one cave sentence, through all-MiniLM-L6-v2.
A static word embedding would give cosine 1.0 for every pair; BERT's last layer
puts the two cricket bats closer to each other than to the flying one.
(Step 3 of `bertkit demo`; the vectors come from bertkit.infer.token_vectors.)

    python examples/contextual_bat.py [model dir or name]   # default: sentence-transformers/all-MiniLM-L6-v2
"""

from __future__ import annotations

import sys

from bertkit.demo import BAT_SENTENCES as SENTENCES
from bertkit.infer import cosine_matrix, token_vectors


def main() -> None:
    model_name = sys.argv[1] if len(sys.argv) > 1 else "sentence-transformers/all-MiniLM-L6-v2"
    names = list(SENTENCES)
    sims = cosine_matrix(token_vectors([SENTENCES[n] for n in names], "bat", model_name))  # [3, 3]
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        print(f"cos({names[i]}, {names[j]}): {sims[i, j]:.4f}")


if __name__ == "__main__":
    main()
