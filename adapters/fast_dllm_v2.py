"""FastDLLMv2Adapter: relay on Fast-dLLM v2 (Efficient-Large-Model/Fast_dLLM_v2_*; NVlabs/Fast-dLLM ``v2/``).

Where things are (``Fast_dLLM_QwenForCausalLM``, remote code ``modeling.py``):

* embedding: ``model.embed_tokens``, hooked directly (``inputs_embeds`` crashes at inference: the block mask is
  built from ``input_ids``);
* final hidden: the output of ``model.norm`` (``output_hidden_states`` is ignored upstream); the LM head is tied;
* token shift: the hidden state at position i predicts token i + 1 (``token_shift = 1``);
* mask id: ``config.mask_token_id`` when present, else the published ``|<MASK>|`` = 151665, or the argument;
* call module: ``model.model``. The model's own ``generate()`` calls ``self.forward(...)`` directly, so hooks on
  the top module never fire there; the inner model is called normally and sees every cache argument.

Absolute positions of a call: ``cache_len + arange(q)``, and with the sub-block cache (``use_block_cache`` with
an int ``replace_position``) ``cache_len + replace_position + arange(q)``. A commit or prefill pass
(``update_past_key_values=True``) appends committed blocks to the cache: it runs relay-free and writes no h
(contract 4). Training (the inner model in train mode with ``labels``) feeds ``[x_t ; x_0]`` (2L columns, and a
complementary copy doubling the batch): only the noisy half takes part in relay. ``relay(z, clean_ids=x0)``
builds that layout without upstream's random re-noising (what ``bptt_rollout`` needs); it runs the model's
training path, which upstream compiles with flex attention (CUDA).

Example::

    relay = relaykit.attach(model)            # detected from Fast_dLLM_QwenForCausalLM / "Fast_dLLM_Qwen"
    with relay.session() as s:
        out = model.generate(prompt, max_new_tokens=256, threshold=0.9, use_block_cache=True)
    print(s.nfe)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from relaykit.adapters._family import FamilyAdapter
from relaykit.cachearg import cache_argument
from relaykit.kvcache import DecodeCall
from relaykit.plan import Binding, CallPlan, all_bare, hf_positions, hf_span
from relaykit.resolve import Side, resolve_module

PUBLISHED_MASK_ID = 151665


def is_fast_dllm_v2(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return type(model).__name__ == "Fast_dLLM_QwenForCausalLM" or getattr(config, "model_type", None) == (
        "Fast_dLLM_Qwen"
    )


class FastDLLMv2Adapter(FamilyAdapter):
    """Fast-dLLM v2 family adapter: block-level and sub-block caches, token shift, [x_t ; x_0] training."""

    name = "fast_dllm_v2"
    published_mask_id = PUBLISHED_MASK_ID
    token_shift = 1
    attention = "block_causal"
    attentions = ("block_causal",)  # the model builds its own block-causal mask
    decode_modes = ("prefix", "sub_block")  # the block-level cache (exact) and the sub-block cache

    # --------------------------------------------------------------- modules
    def embedding(self, model: nn.Module) -> nn.Module:
        return resolve_module(model, "model.embed_tokens", role="embedding")

    def final_hidden(self, model: nn.Module) -> tuple[nn.Module, Side]:
        return resolve_module(model, "model.norm", role="final_hidden"), "output"

    def call_module(self, model: nn.Module) -> nn.Module:
        return resolve_module(model, "model", role="call module")

    # --------------------------------------------------------------- per-call behaviour
    def plan_call(
        self, binding: Binding, ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], *, mask_token_id: int
    ) -> CallPlan:
        """Training ``[x_t ; x_0]`` (2L columns, ``labels`` of L): relay on the noisy half, at 0 .. L-1. Decoding:
        ``cache_len + arange(q)``, plus ``replace_position`` inside the cached block for a sub-block call. Commit
        and prefill passes (``update_past_key_values=True``) store committed blocks: all relay-free; every other
        call takes relay wherever a state exists."""
        b, q = ids.shape
        cache = cache_argument(binding.call_module, args, kwargs)
        bare = all_bare(ids, bool(kwargs.get("update_past_key_values")))  # (b, q)
        labels = kwargs.get("labels")
        if isinstance(labels, Tensor) and q == 2 * labels.shape[-1]:  # [x_t ; x_0]: relay on x_t
            half = torch.arange(q // 2, device=ids.device).expand(b, q // 2)
            return CallPlan(
                half,
                bare[:, : q // 2],
                columns=slice(0, q // 2),
                cache=cache,
                uses_cache=cache is not None,
                span=(0, q // 2),
            )
        start = hf_positions(ids, kwargs, cache)[:, :1]  # (b, 1): cache_len
        span = hf_span(ids, kwargs, cache)  # (cache_len, cache_len + q) unless position_ids were passed
        replace = kwargs.get("replace_position")
        if kwargs.get("use_block_cache") and replace is not None:
            start = start + int(replace)  # sub-block inside the cached block
            span = None if span is None else (span[0] + int(replace), span[1] + int(replace))
        positions = start + torch.arange(q, device=ids.device)  # (b, q)
        return CallPlan(positions, bare, cache=cache, uses_cache=cache is not None, span=span)

    def clean_layout(self, model: nn.Module) -> bool:
        return True

    def call_backbone(
        self, model: nn.Module, input_ids: Tensor, *, clean_ids: Tensor | None = None, **kwargs: Any
    ) -> Any:
        if clean_ids is None:
            return model(input_ids, **kwargs)
        if clean_ids.shape != input_ids.shape:
            raise ValueError(f"clean_ids {tuple(clean_ids.shape)} must match input_ids {tuple(input_ids.shape)}")
        inner = self.call_module(model)
        if not inner.training:
            raise RuntimeError(
                "Fast-dLLM v2 selects its [x_t ; x_0] training layout with model.train(); call model.train() "
                "before relay(z, clean_ids=x0) (its attention dropout is 0, so train mode is deterministic)"
            )
        n = input_ids.shape[1]
        out = inner(input_ids=torch.cat([input_ids, clean_ids], dim=1), labels=clean_ids, **kwargs)  # (b, 2n, d)
        head = model.get_output_embeddings()
        return head(out.last_hidden_state[:, :n])  # (b, n, V): logits of the noisy half

    def decode_kwargs(self, model: nn.Module, call: DecodeCall) -> dict[str, Any]:
        """Fast-dLLM v2's own arguments for :func:`relaykit.generate`.

        The model builds its block-causal mask itself, in blocks of ``block_size`` counted from position 0, so the
        loop's blocks must sit on multiples of ``block_size`` (a prompt length that is a multiple of it).
        Commit and prefill passes append to the cache (``update_past_key_values``); the sub-block cache keeps
        ``block_past_key_values`` as the call's ``block_cache`` (see :meth:`decode_block_cache`).
        """
        block = call.block
        if block is None:  # the prompt prefill: the loop's blocks follow the prompt segment
            block = call.segments[1] if len(call.segments) > 1 else (call.start, call.stop)
        s, e = block
        size = e - s
        if s % size:
            raise ValueError(
                f"Fast-dLLM v2 masks attention in blocks of block_size from position 0, but this block spans "
                f"{s}..{e - 1}; give relaykit.generate a prompt whose length is a multiple of block_size={size} "
                f"(or use the model's own generate(), which pads the first block)"
            )
        kwargs: dict[str, Any] = {"block_size": size}
        if call.cache is not None or call.store:
            kwargs.update(use_cache=True, update_past_key_values=call.store)
        if call.cache is not None:
            kwargs["past_key_values"] = call.cache
        if call.kind == "block":  # the whole active block: fills the block cache
            kwargs.update(use_block_cache=True)
        elif call.kind == "sub_block":
            a, _ = call.replaced if call.replaced is not None else (call.start, call.stop)
            kwargs.update(use_block_cache=True, block_past_key_values=call.block_cache, replace_position=a - s)
        return kwargs

    def decode_block_cache(self, output: Any, call: DecodeCall) -> Any:
        """A block call (the whole active block) fills ``block_past_key_values``; sub-block calls read it."""
        return output.block_past_key_values if call.kind == "block" else call.block_cache
