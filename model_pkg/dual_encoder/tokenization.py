"""The LSTM text tower's word tokenizer: lower-cased words and punctuation -> ids in a vocabulary built from
the training captions.

Apart from the towers because it is the text side's preprocessing, not a layer (as transformers keeps
`tokenization_<name>.py` beside `modeling_<name>.py`): training builds the vocabulary with `build_vocab`
before any model exists, and the config stores it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

__all__ = ["WordTokenizer", "build_vocab", "word_tokenize"]

_WORD = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)


def word_tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks (any script: non-English words are words too)."""
    return _WORD.findall(text.lower())


def build_vocab(captions: Iterable[str], min_freq: int = 2, max_size: int | None = None) -> list[str]:
    """The LSTM tower's vocabulary from training captions: `<pad>`, `<unk>`, then words seen at least
    `min_freq` times, most frequent first (ties alphabetical)."""
    counts = Counter(w for caption in captions for w in word_tokenize(caption))
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max(0, max_size - 2)]
    if not words:
        raise ValueError(f"no word occurs {min_freq} times in the captions: cannot build an LSTM vocabulary.")
    return ["<pad>", "<unk>", *words]


class WordTokenizer:
    """Words -> vocab ids; unknown words (typos, other languages) map to `<unk>` (id 1), `<pad>` is 0."""

    def __init__(self, vocab: Sequence[str], max_length: int):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = [[self.index.get(w, 1) for w in word_tokenize(t)][: self.max_length] or [1] for t in texts]
        width = max(len(x) for x in ids)
        input_ids = torch.zeros(len(ids), width, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}
