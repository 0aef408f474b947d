"""DreamAdapter: relay on Dream (Dream-org/Dream-v0-Base-7B / -Instruct-7B, remote code ``modeling_dream.py``).

Where things are (``DreamModel``, config ``model_type == "Dream"``):

* embedding: ``model.embed_tokens`` (``DreamBaseModel``); final hidden: the output of ``model.norm`` (the input of
  ``lm_head``, untied in the published 7B);
* mask id: ``config.mask_token_id`` (151666 published), else the published id, or the ``mask_token_id`` argument;
* token shift: Dream starts from Qwen2.5, so the hidden state at i predicts token i + 1 (``token_shift = 1``;
  ``diffusion_generate`` shifts its logits right by one);
* attention: bidirectional; no KV cache in its sampler (``relaykit.generate`` runs it cache-free);
* calls: ``diffusion_generate`` calls ``self(x, attention_mask, tok_idx)`` on the top module with positional
  arguments, a full canvas each step. ``tok_idx`` are RoPE positions (shifted by left padding), not canvas
  columns, so the relay's positions are the canvas columns ``0 .. N-1`` whatever is passed.

Example::

    relay = relaykit.attach(model)                       # detected from DreamModel / config.model_type "Dream"
    with relay.session() as s:
        out = model.diffusion_generate(prompt, max_new_tokens=256, steps=256, alg="entropy")   # unchanged
    print(s.nfe)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from relaykit.adapters._family import FamilyAdapter
from relaykit.cachearg import cache_argument
from relaykit.kvcache import DecodeCall
from relaykit.plan import Binding, CallPlan, clean_rows, hf_positions
from relaykit.resolve import Side, resolve_module

PUBLISHED_MASK_ID = 151666


def is_dream(model: nn.Module) -> bool:
    """DreamModel, or any model whose config says ``model_type == "Dream"``."""
    config = getattr(model, "config", None)
    return type(model).__name__ == "DreamModel" or getattr(config, "model_type", None) == "Dream"


class DreamAdapter(FamilyAdapter):
    """Dream family adapter: token shift 1, bidirectional, canvas-column positions, no cache."""

    name = "dream"
    published_mask_id = PUBLISHED_MASK_ID
    token_shift = 1
    attention = "bidirectional"
    attentions = ("bidirectional",)  # its attention is never causal
    decode_modes = ()  # Dream's sampler recomputes the canvas every step
    builds_masks_from_call = True  # its attention masks come from DecodeCall (padding through attention_mask)

    def embedding(self, model: nn.Module) -> nn.Module:
        return resolve_module(model, "model.embed_tokens", role="embedding")

    def final_hidden(self, model: nn.Module) -> tuple[nn.Module, Side]:
        return resolve_module(model, "model.norm", role="final_hidden"), "output"

    def plan_call(
        self, binding: Binding, ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], *, mask_token_id: int
    ) -> CallPlan:
        """Positions: the canvas columns (after any cache); ``position_ids`` / ``tok_idx`` are RoPE positions."""
        cache = cache_argument(binding.call_module, args, kwargs)
        positions = hf_positions(ids, {}, cache)  # (b, q): cache length + arange(q), position_ids ignored
        return CallPlan(positions, clean_rows(ids, mask_token_id), cache=cache, uses_cache=cache is not None)

    def decode_kwargs(self, model: nn.Module, call: DecodeCall) -> dict[str, Any]:
        """A (b, 1, q, kv) bool attention mask when some keys are hidden (left padding); nothing else."""
        mask = call.attention_mask(torch.float32, additive=False)  # Dream's sdpa takes a bool mask
        return {} if mask is None else {"attention_mask": mask}
