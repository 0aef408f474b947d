"""Shared builders for the rollout / driver / training tests: a tiny relay, batches, a trained-looking channel."""

from __future__ import annotations

import torch
from tiny import MASK_ID, TinyMDM

import relaykit
from relaykit import RelayModel

VOCAB = 32
GENERIC = {"embedding": "encoder.tok_emb", "final_hidden": "encoder.norm", "mask_token_id": MASK_ID}


def tiny_relay(
    *, width: int = 16, layers: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32, trained: bool = True
) -> RelayModel:
    """TinyMDM with a relay; ``trained`` gives the channel random weights (zero-init R passes no gradient to h)."""
    torch.manual_seed(seed)
    relay = relaykit.attach(TinyMDM(width=width, layers=layers).to(dtype), **GENERIC)
    if trained:
        with torch.no_grad():
            relay.channel.proj.weight.normal_(0.0, 0.3)
    return relay


def batch(b: int = 3, n: int = 8, *, seed: int = 0, p_maskable: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth x0 (b, n) without the mask id and a maskable mask with at least one True per row."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, MASK_ID, (b, n), generator=g)
    maskable = torch.rand(b, n, generator=g) < p_maskable
    maskable[:, -1] = True
    return x0, maskable
