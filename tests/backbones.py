"""The one list of test backbones: the core's own (generic adapter) and every family's twin.

Each entry builds a tiny model from a config (offline, CPU) and says how to attach it and call it. Tests of the
core contracts run over ``GENERIC`` (a plain-PyTorch MDM and HF models through their embedding getters); tests of
the family adapters run over ``FAMILIES``. Both are views of ``BACKBONES``; add a new family there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tiny import MASK_ID, TinyMDM, tiny_llama_bidirectional, tiny_qwen2
from torch import nn

from relaykit.testing.twins.bd3lm import tiny_bd3lm
from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2
from relaykit.testing.twins.llada import tiny_llada
from relaykit.testing.twins.mdlm import tiny_dit, tiny_hf_mdlm


@dataclass(frozen=True)
class Backbone:
    name: str  # test id
    adapter: str  # the adapter attach() picks ("generic" for the core's own backbones)
    build: Callable[..., nn.Module]
    vocab: int
    mask_id: int
    attach_kwargs: dict[str, Any] = field(default_factory=dict)
    #: keyword arguments of a plain full-sequence forward, given the batch size
    call_kwargs: Callable[[int], dict[str, Any]] = lambda b: {}
    max_len: int = 64  # longest sequence the model takes (BD3-LM: model_length)

    def __repr__(self) -> str:  # short, so hypothesis failures print cleanly
        return self.name


def _tiny_mdm() -> nn.Module:
    torch.manual_seed(0)
    return TinyMDM().eval()


def _sigma(b: int) -> dict[str, Any]:
    return {"sigma": torch.zeros(b)}


def _timesteps(b: int) -> dict[str, Any]:
    return {"timesteps": torch.zeros(b)}


def _sample_mode(b: int) -> dict[str, Any]:
    return {"timesteps": torch.zeros(b), "sample_mode": True}


def _block(b: int) -> dict[str, Any]:
    return {"block_size": 4}


_PATHS = {"embedding": "encoder.tok_emb", "final_hidden": "encoder.norm", "mask_token_id": MASK_ID}
BACKBONES = [
    Backbone("custom-mdm", "generic", _tiny_mdm, 32, MASK_ID, _PATHS),
    Backbone("hf-qwen2-getters", "generic", tiny_qwen2, 48, 47),
    Backbone("hf-llama-bidirectional", "generic", tiny_llama_bidirectional, 48, 47),
    Backbone("llada", "llada", tiny_llada, 64, 63),
    Backbone("llada-tied", "llada", lambda **kw: tiny_llada(weight_tying=True, **kw), 64, 63),
    Backbone("mdlm-dit", "mdlm", tiny_dit, 48, 47, call_kwargs=_sigma),
    Backbone("mdlm-hf", "mdlm", tiny_hf_mdlm, 48, 47, call_kwargs=_timesteps),
    Backbone("bd3lm", "mdlm", tiny_bd3lm, 48, 47, call_kwargs=_sample_mode, max_len=16),
    Backbone("fast-dllm-v2", "fast_dllm_v2", tiny_fast_dllm_v2, 64, 63, {"mask_token_id": 63}, _block),
]
GENERIC = [b for b in BACKBONES if b.adapter == "generic"]
FAMILIES = [b for b in BACKBONES if b.adapter != "generic"]


def logits_of(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


def random_ids(backbone: Backbone, b: int, n: int, *, seed: int, mask_fraction: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, backbone.vocab - 1, (b, n), generator=g)
    ids[torch.rand(b, n, generator=g) < mask_fraction] = backbone.mask_id
    return ids


def randomise_channel(relay: Any, *, seed: int = 0, std: float = 0.5) -> None:
    """Give the (zero-initialised) channel seeded random weights so relay changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in relay.channel.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std)
