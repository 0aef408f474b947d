"""A toy task and a tiny masked diffusion model shared by the training-loop examples (CPU, seconds).

Task: arithmetic progressions mod 10. The first 2 to 4 tokens are given (not maskable); the rest follow from
them, so a model that learns the rule can unmask everything. Tokens 0..9 are digits, 10 is the mask token.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

VOCAB, MASK, DIGITS = 11, 10, 10


class ToyMDM(nn.Module):
    """A small bidirectional transformer: token embedding ``tok``, encoder, final norm ``norm``, LM head."""

    def __init__(self, width: int = 32, layers: int = 2, heads: int = 4, max_len: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(input_ids) + self.pos[: input_ids.shape[1]]  # (b, n, d)
        return self.head(self.norm(self.encoder(x)))  # (b, n, V)


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
