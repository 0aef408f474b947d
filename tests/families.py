"""The backbone families of relaykit.adapters, as twins: each entry builds a model and says how to call it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from relaykit.testing.twins.bd3lm import tiny_bd3lm
from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2
from relaykit.testing.twins.llada import tiny_llada
from relaykit.testing.twins.mdlm import tiny_dit, tiny_hf_mdlm


@dataclass(frozen=True)
class Family:
    name: str  # test id
    adapter: str  # the adapter auto-detection must pick
    build: Callable[..., nn.Module]
    vocab: int
    mask_id: int
    attach_kwargs: dict[str, Any] = field(default_factory=dict)
    #: keyword arguments of a plain full-sequence forward, given the batch size
    call_kwargs: Callable[[int], dict[str, Any]] = lambda b: {}
    max_len: int = 64  # longest sequence the twin takes (BD3-LM: model_length)

    def __repr__(self) -> str:
        return self.name


def _sigma(b: int) -> dict[str, Any]:
    return {"sigma": torch.zeros(b)}


def _timesteps(b: int) -> dict[str, Any]:
    return {"timesteps": torch.zeros(b)}


def _sample_mode(b: int) -> dict[str, Any]:
    return {"timesteps": torch.zeros(b), "sample_mode": True}


def _block(b: int) -> dict[str, Any]:
    return {"block_size": 4}


FAMILIES = [
    Family("llada", "llada", tiny_llada, 64, 63),
    Family("llada-tied", "llada", lambda **kw: tiny_llada(weight_tying=True, **kw), 64, 63),
    Family("mdlm-dit", "mdlm", tiny_dit, 48, 47, call_kwargs=_sigma),
    Family("mdlm-hf", "mdlm", tiny_hf_mdlm, 48, 47, call_kwargs=_timesteps),
    Family("bd3lm", "mdlm", tiny_bd3lm, 48, 47, call_kwargs=_sample_mode, max_len=16),
    Family("fast-dllm-v2", "fast_dllm_v2", tiny_fast_dllm_v2, 64, 63, {"mask_token_id": 63}, _block),
]


def logits_of(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


def random_ids(family: Family, b: int, n: int, *, seed: int, mask_fraction: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, family.vocab - 1, (b, n), generator=g)
    ids[torch.rand(b, n, generator=g) < mask_fraction] = family.mask_id
    return ids


def randomise_channel(relay: Any, *, seed: int = 0, std: float = 0.5) -> None:
    """Give the (zero-initialised) channel seeded random weights so relay changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in relay.channel.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std)
