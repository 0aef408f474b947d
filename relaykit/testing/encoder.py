"""ToyEncoder: the one small plain-PyTorch masked diffusion model the tests, examples and benchmarks share.

Legend: b batch, n sequence length, d width, V vocabulary.

A bidirectional transformer encoder, the simplest MDM a user might write: token embedding ``tok_emb``, learned
positions ``pos_emb``, pre-norm encoder layers ``blocks``, final norm ``norm`` (its output is the last hidden
state relay captures) and an untied LM head ``head``. No transformers import.

Example::

    >>> import relaykit, torch
    >>> model = ToyEncoder(vocab=32, width=16)
    >>> relay = relaykit.attach(model, embedding="tok_emb", final_hidden="norm", mask_token_id=31)
    >>> relay(torch.randint(0, 31, (2, 8))).logits.shape
    torch.Size([2, 8, 32])
"""

from __future__ import annotations

import torch
from torch import nn


class ToyEncoder(nn.Module):
    """A bidirectional transformer encoder MDM: ``tok_emb`` -> ``blocks`` -> ``norm`` -> ``head``.

    Args:
        vocab: V, token ids 0..V-1 (the mask token is one of them).
        width: d, the model width.
        layers, heads: encoder layers and attention heads.
        max_len: longest sequence (learned position embeddings).
        ffn_ratio: feed-forward width as a multiple of d.
    """

    def __init__(
        self, vocab: int = 32, width: int = 16, layers: int = 2, heads: int = 2, max_len: int = 64, ffn_ratio: int = 4
    ) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, width)
        self.pos_emb = nn.Parameter(torch.randn(max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, ffn_ratio * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(input_ids) + self.pos_emb[: input_ids.shape[1]]  # (b, n, d)
        return self.head(self.norm(self.blocks(x)))  # (b, n, V)
