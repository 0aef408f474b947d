"""A toy task and a tiny masked diffusion model shared by the training-loop examples (CPU, seconds).

Task: arithmetic progressions mod 10. The first 2 to 4 tokens are given (not maskable); the rest follow from
them, so a model that learns the rule can unmask everything. Tokens 0..9 are digits, 10 is the mask token.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from relaykit.testing.encoder import ToyEncoder

VOCAB, MASK, DIGITS = 11, 10, 10


def toy_mdm(width: int = 32, layers: int = 2, heads: int = 4, max_len: int = 64) -> ToyEncoder:
    """relaykit's toy encoder MDM for this task: embedding ``tok_emb``, final norm ``norm``, LM head over 11 tokens."""
    return ToyEncoder(VOCAB, width, layers, heads, max_len)


def progressions(batch: int, length: int, *, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches (x0 (b, n), maskable (b, n)) of progressions ``a, a+d, a+2d, ...`` mod 10."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.arange(length)
    while True:
        a = torch.randint(0, DIGITS, (batch, 1), generator=g)
        d = torch.randint(1, DIGITS, (batch, 1), generator=g)
        x0 = (a + d * steps) % DIGITS  # (b, n)
        prompt = torch.randint(2, 5, (batch, 1), generator=g)  # 2 to 4 given tokens
        yield x0, steps >= prompt  # maskable: everything after the prompt
