"""LLaDAAdapter: relay on LLaDA (GSAI-ML/LLaDA-8B-*) and on Fast-dLLM v1's cached copy of the same model.

Where things are (``LLaDAModelLM`` as published; the inner ``LLaDAModel`` works too):

* embedding: ``model.transformer.wte`` (an nn.Embedding, d_model wide);
* final hidden: the output of ``model.transformer.ln_f`` (the LM head's input). The head is
  ``model.transformer.ff_out`` when ``weight_tying`` is false, and every block has an MLP ``ff_out`` too: modules
  are resolved by exact path, never by name suffix;
* mask id: ``config.mask_token_id`` (126336 in the published config), or the ``mask_token_id`` argument;
* calls: ``LLaDAModelLM.forward`` calls ``self.model.forward(...)`` directly, so the top module sees each call's
  arguments; no token shift; fully bidirectional attention.

Absolute positions of a call (Fast-dLLM v1, ``v1/llada/generate.py``):

* full forward (and the per-block refresh ``model(x, use_cache=True)``): ``0 .. L-1``;
* prefix cache, ``model(x[:, s:], past_key_values=prefix)``: ``len(prefix) .. len(prefix) + q - 1``;
* dual cache, ``model(x[:, s:e], past_key_values=full, replace_position=r)``: the True columns of ``r`` (b, L).

A refresh call (``use_cache=True`` and no ``past_key_values``, the full forward that refills the cache at each
block) runs relay-free: with bidirectional attention any relay would leak into every key it caches (contract 4).
It still writes h at its masked positions, like any step.

Example::

    relay = relaykit.attach(model)                       # detected from LLaDAModelLM / config.model_type "llada"
    with relay.session() as s:
        out = generate_with_dual_cache(model, prompt)    # Fast-dLLM v1's loop, unchanged
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from relaykit.adapters._family import FamilyAdapter
from relaykit.cachearg import cache_argument
from relaykit.kvcache import DecodeCall
from relaykit.plan import Binding, CallPlan, all_bare, clean_rows, hf_positions, hf_span
from relaykit.resolve import Side, resolve_module
from relaykit.spans import known_span, remember

PUBLISHED_MASK_ID = 126336


def is_llada(model: nn.Module) -> bool:
    """LLaDAModelLM / LLaDAModel, or any model whose config says ``model_type == "llada"``."""
    config = getattr(model, "config", None)
    return type(model).__name__ in ("LLaDAModelLM", "LLaDAModel") or getattr(config, "model_type", None) == "llada"


class LLaDAAdapter(FamilyAdapter):
    """LLaDA family adapter (also Fast-dLLM v1's prefix and dual caches). ``mask_token_id`` overrides the config's."""

    name = "llada"
    published_mask_id = PUBLISHED_MASK_ID
    token_shift = 0
    attention = "bidirectional"
    attentions = ("bidirectional",)  # its forward takes no attention mask from relaykit.generate
    decode_modes = ("prefix", "dual")  # Fast-dLLM v1's caches (the hub file refuses any cache)

    # --------------------------------------------------------------- modules
    def _prefix(self, model: nn.Module) -> str:
        """'model.transformer' on LLaDAModelLM, 'transformer' on a bare LLaDAModel."""
        if isinstance(getattr(getattr(model, "model", None), "transformer", None), nn.ModuleDict):
            return "model.transformer"
        if isinstance(getattr(model, "transformer", None), nn.ModuleDict):
            return "transformer"
        raise AttributeError(
            f"{type(model).__name__} is not laid out like LLaDA: expected an nn.ModuleDict at 'model.transformer' "
            f"(LLaDAModelLM) or 'transformer' (LLaDAModel); use the generic adapter for other models"
        )

    def embedding(self, model: nn.Module) -> nn.Module:
        return resolve_module(model, f"{self._prefix(model)}.wte", role="embedding")

    def final_hidden(self, model: nn.Module) -> tuple[nn.Module, Side]:
        return resolve_module(model, f"{self._prefix(model)}.ln_f", role="final_hidden"), "output"

    def tied(self, model: nn.Module) -> bool | None:
        value = getattr(getattr(model, "config", None), "weight_tying", None)
        return bool(value) if value is not None else super().tied(model)

    # --------------------------------------------------------------- per-call behaviour
    def plan_call(
        self, binding: Binding, ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], *, mask_token_id: int
    ) -> CallPlan:
        """Positions: ``replace_position``'s True columns (dual cache), else the HF rule (full forward, prefix
        cache). A refresh (``use_cache=True``, no cache given) is relay-free: with bidirectional attention any relay
        would leak into every key it caches. h is still written at its masked positions."""
        cache = cache_argument(binding.call_module, args, kwargs)
        replace = kwargs.get("replace_position")
        if replace is None:
            positions, span = hf_positions(ids, kwargs, cache), hf_span(ids, kwargs, cache)
        else:  # a dual cache: the columns relaykit.generate recorded (no read), or read from the mask
            positions, span = _replaced_columns(ids, replace)
        refresh = bool(kwargs.get("use_cache")) and cache is None
        bare = all_bare(ids, True) if refresh else clean_rows(ids, mask_token_id)
        return CallPlan(positions, bare, cache=cache, uses_cache=cache is not None, span=span)

    def decode_kwargs(self, model: nn.Module, call: DecodeCall) -> dict[str, Any]:
        """LLaDA's own arguments for :func:`relaykit.generate`: a list cache and a dual-cache ``replace_position``.

        No position ids or attention masks: LLaDA attends bidirectionally and places RoPE by cache index.
        """
        kwargs: dict[str, Any] = {}
        if call.store or call.cache is not None:
            kwargs["use_cache"] = True
        if call.cache is not None:
            kwargs["past_key_values"] = call.cache
        if call.replaced is not None:  # dual cache: the block's cached keys/values are overwritten in place
            a, b = call.replaced
            replace = torch.zeros(call.batch, call.cache_length, dtype=torch.bool, device=call.device)
            replace[:, a:b] = True
            columns = range(call.cache_length)[a:b]  # the True columns, as the slice above set them
            kwargs["replace_position"] = remember(replace, (columns.start, columns.stop)) if columns else replace
        return kwargs


def _replaced_columns(ids: Tensor, replace: Any) -> tuple[Tensor, tuple[int, int] | None]:
    """The True columns of a dual-cache ``replace_position`` (b, L), in order: the positions of ``ids`` (b, q), and
    their span when relaykit built the mask (:func:`relaykit.spans.known_span`: nothing read); else read (a sync)."""
    b, q = ids.shape
    if not isinstance(replace, Tensor) or replace.dim() != 2 or replace.shape[0] != b:
        got = tuple(replace.shape) if isinstance(replace, Tensor) else type(replace).__name__
        raise ValueError(f"replace_position must be a (batch, L) bool tensor with batch {b}; got {got}")
    span = known_span(replace)
    if span is not None and span[1] - span[0] == q:  # the mask holds True exactly at span[0] .. span[1] - 1
        return torch.arange(*span, device=ids.device).expand(b, q), span
    counts = replace.sum(-1)  # (b,)
    if bool((counts != q).any()):
        raise ValueError(
            f"replace_position selects {counts.tolist()} columns per row but the call feeds {q} tokens; the dual "
            f"cache needs exactly one True per fed token"
        )
    cols = torch.arange(replace.shape[1], device=replace.device).expand(b, -1)  # (b, L)
    return cols[replace.bool()].view(b, q).to(ids.device), None  # True columns, in order
