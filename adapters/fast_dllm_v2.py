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

from relaykit.adapter import Adapter, Side, resolve_module
from relaykit.kvcache import DecodeCall

PUBLISHED_MASK_ID = 151665


def is_fast_dllm_v2(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return type(model).__name__ == "Fast_dLLM_QwenForCausalLM" or getattr(config, "model_type", None) == (
        "Fast_dLLM_Qwen"
    )


class FastDLLMv2Adapter(Adapter):
    """Fast-dLLM v2 family adapter: block-level and sub-block caches, token shift, [x_t ; x_0] training."""

    name = "fast_dllm_v2"
    token_shift = 1
    attention = "block_causal"
    decode_modes = ("prefix", "sub_block")  # the block-level cache and the block (sub-block) cache

    def __init__(self, mask_token_id: int | None = None) -> None:
        if mask_token_id is not None and (not isinstance(mask_token_id, int) or isinstance(mask_token_id, bool)):
            raise TypeError(f"mask_token_id must be an int or None, got {type(mask_token_id).__name__}")
        self.mask_override = mask_token_id

    # --------------------------------------------------------------- modules
    def embedding(self, model: nn.Module) -> nn.Module:
        return resolve_module(model, "model.embed_tokens", role="embedding")

    def final_hidden(self, model: nn.Module) -> tuple[nn.Module, Side]:
        return resolve_module(model, "model.norm", role="final_hidden"), "output"

    def call_module(self, model: nn.Module) -> nn.Module:
        return resolve_module(model, "model", role="call module")

    def mask_token_id(self, model: nn.Module) -> int:
        if self.mask_override is not None:
            return self.mask_override
        value = getattr(getattr(model, "config", None), "mask_token_id", None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        vocab = self.vocab_size(model)
        if vocab is not None and vocab > PUBLISHED_MASK_ID:
            return PUBLISHED_MASK_ID
        raise ValueError(
            f"{type(model).__name__}: config has no mask_token_id and the vocabulary ({vocab}) is smaller than "
            f"Fast-dLLM v2's |<MASK>| id {PUBLISHED_MASK_ID}; pass mask_token_id=... to attach()"
        )

    # --------------------------------------------------------------- per-call behaviour
    @staticmethod
    def _training_layout(input_ids: Tensor, kwargs: dict[str, Any]) -> bool:
        labels = kwargs.get("labels")
        return isinstance(labels, Tensor) and input_ids.shape[1] == 2 * labels.shape[-1]

    def call_positions(self, input_ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        b, q = input_ids.shape
        if self._training_layout(input_ids, kwargs):  # [x_t ; x_0]: both halves at 0 .. L-1
            half = torch.arange(q // 2, device=input_ids.device)
            return torch.cat([half, half]).expand(b, q)
        start = super().call_positions(input_ids, args, kwargs)[:, :1]  # (b, 1): cache_len
        replace = kwargs.get("replace_position")
        if kwargs.get("use_block_cache") and replace is not None:
            start = start + int(replace)  # sub-block inside the cached block
        return start + torch.arange(q, device=input_ids.device)

    def relay_columns(self, input_ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> slice | None:
        if self._training_layout(input_ids, kwargs):
            return slice(0, input_ids.shape[1] // 2)  # the noisy half x_t
        return None

    def bare_positions(
        self, input_ids: Tensor, positions: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], *, mask_token_id: int
    ) -> Tensor:
        """Commit and prefill passes (``update_past_key_values=True``) store committed blocks: all relay-free.
        Every other call takes relay wherever a state exists."""
        return torch.full_like(input_ids, bool(kwargs.get("update_past_key_values")), dtype=torch.bool)

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

    # --------------------------------------------------------------- decoding loop (relaykit.generate)
    def decode_kwargs(self, model: nn.Module, call: DecodeCall) -> dict[str, Any]:
        """Fast-dLLM v2's own cache arguments. The model builds its block-causal mask itself, on absolute
        multiples of ``block_size``, so the decode's blocks must sit there: the prompt length must be a multiple
        of the block size (an infilled canvas starts at 0)."""
        size = call.block_size
        if call.attention != "block_causal" or size is None:
            raise ValueError("Fast-dLLM v2 is block-causal: decode it with attention='block_causal' and a block_size")
        starts = [a for a, _ in call.segments[1:]]
        if any(a % size for a in starts):
            raise ValueError(
                f"Fast-dLLM v2 masks attention on absolute blocks of block_size={size}, but this decode's blocks "
                f"start at {starts}: pad or trim the prompt to a multiple of {size} tokens"
            )
        kwargs: dict[str, Any] = {"block_size": size, "past_key_values": call.cache}
        kwargs["use_cache"] = call.cache is not None or call.store
        if call.kind in ("prefill", "commit"):
            kwargs["update_past_key_values"] = True  # append the finished block (relay-free: bare_positions)
        elif call.kind == "block":  # the whole block, cached in block_past_key_values for the sub-block calls
            kwargs["use_block_cache"] = True
        elif call.kind == "sub_block":
            if call.block is None or "block_past_key_values" not in call.memo:
                raise RuntimeError("a Fast-dLLM v2 sub-block call needs the block cache of an earlier block call")
            kwargs["use_block_cache"] = True
            kwargs["block_past_key_values"] = call.memo["block_past_key_values"]
            kwargs["replace_position"] = call.start - call.block[0]
        return kwargs

    def decode_cache(self, output: Any, call: DecodeCall) -> Any:
        """The committed-block cache; a block call's ``block_past_key_values`` is kept in ``call.memo``."""
        if call.kind == "block":
            call.memo["block_past_key_values"] = output.block_past_key_values
        cache = getattr(output, "past_key_values", None)
        return cache if cache is not None else call.cache

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "mask_token_id": self.mask_override}
