"""Backbone factories shared by the core tests: each returns (model, attach kwargs, vocab, mask id)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tiny import MASK_ID, TinyMDM, tiny_llama_bidirectional, tiny_qwen2
from torch import nn


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[], nn.Module]
    attach_kwargs: dict[str, Any]
    vocab: int
    mask_id: int

    def __repr__(self) -> str:  # short, so hypothesis failures print cleanly
        return self.name


def _tiny_mdm() -> nn.Module:
    torch.manual_seed(0)
    return TinyMDM().eval()


BACKBONES = [
    Backbone(
        "custom-mdm",
        _tiny_mdm,
        {"embedding": "encoder.tok_emb", "final_hidden": "encoder.norm", "mask_token_id": MASK_ID},
        vocab=32,
        mask_id=MASK_ID,
    ),
    Backbone("hf-qwen2-getters", tiny_qwen2, {}, vocab=48, mask_id=47),
    Backbone("hf-llama-bidirectional", tiny_llama_bidirectional, {}, vocab=48, mask_id=47),
]


def logits_of(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits
