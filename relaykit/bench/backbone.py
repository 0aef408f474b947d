"""A plain-PyTorch transformer for the benchmarks: HF calling conventions, no transformers import.

Legend: b batch, q fed positions, L cached positions, kv keys attended, h heads, d head width, D model width.

``forward(input_ids, position_ids=None, attention_mask=None, past_key_values=None, use_cache=False)`` with a 4D
bool ``attention_mask`` (b, 1, q, kv) (True = may attend; None = bidirectional), absolute ``position_ids`` (b, q)
(learned position embeddings), and a cache that is a list of (key, value) per layer, (b, h, L, d). That is all
``relaykit.generate``'s default adapter needs to run it with and without a KV cache.

Example::

    >>> model = BenchTransformer(vocab=64, width=32, layers=2, heads=4)
    >>> model(torch.randint(0, 63, (1, 8))).logits.shape
    torch.Size([1, 8, 64])
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class BenchOutput:
    logits: Tensor
    past_key_values: list[tuple[Tensor, Tensor]] | None


class BenchLayer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(
        self, x: Tensor, mask: Tensor | None, past: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, q, _ = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, q, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (3, b, h, q, d)
        query, key, value = qkv[0], qkv[1], qkv[2]
        if past is not None:
            key, value = torch.cat([past[0], key], 2), torch.cat([past[1], value], 2)  # (b, h, L + q, d)
        att = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)  # (b, h, q, d)
        x = x + self.out(att.transpose(1, 2).reshape(b, q, -1))
        return x + self.mlp(self.norm2(x)), (key, value)


class BenchTransformer(nn.Module):
    """Token + learned position embeddings, pre-norm layers, final norm, untied LM head."""

    def __init__(self, vocab: int = 1024, width: int = 512, layers: int = 8, heads: int = 8, max_len: int = 1024):
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=max_len, mask_token_id=vocab - 1, hidden_size=width)
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(max_len, width)
        self.layers = nn.ModuleList(BenchLayer(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        past_key_values: list[tuple[Tensor, Tensor]] | None = None,
        use_cache: bool = False,
    ) -> BenchOutput:
        b, q = input_ids.shape
        if position_ids is None:
            past = 0 if not past_key_values else past_key_values[0][0].shape[2]
            position_ids = (past + torch.arange(q, device=input_ids.device)).expand(b, q)
        x = self.embed(input_ids) + self.pos(position_ids)  # (b, q, D)
        presents = []
        for i, layer in enumerate(self.layers):
            x, present = layer(x, attention_mask, past_key_values[i] if past_key_values else None)
            presents.append(present)
        logits = self.head(self.norm(x))  # (b, q, V)
        return BenchOutput(logits, presents if use_cache else None)
