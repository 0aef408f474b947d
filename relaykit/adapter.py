"""Adapter: what relaykit must know about one backbone family, and the helpers adapters share.

An adapter answers, for one model: where the token embedding is (relay adds R(h) to its output), where the last
hidden state is (captured as the new h), the mask token id, the token-shift alignment, which module sees each
call's keyword arguments, and which absolute positions a call covers (full sequence, prefix cache, sub-block ...).

The core never imports transformers: adapters read HF objects by duck typing.

Example (a custom adapter only needs the methods it changes)::

    class MyAdapter(Adapter):
        name = "mine"
        def embedding(self, model): return model.tok
        def final_hidden(self, model): return model.norm, "output"
        def mask_token_id(self, model): return 3
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from relaykit.cachearg import cache_argument, cache_parameter, forward_parameters, output_cache
from relaykit.kvcache import Attention, DecodeCall, crop_cache
from relaykit.legacy import DeprecatedCallAPI, bridges_legacy, legacy_plan
from relaykit.plan import Binding, CallPlan, clean_rows, hf_positions, hf_span
from relaykit.resolve import (
    Side,
    config_mask_id,
    embedding_vocab,
    embedding_width,
    float_dtype_device,
    hidden_width,
    module_path,
)

__all__ = ["Adapter", "Binding", "CallPlan", "Side", "clean_rows", "hf_positions", "hf_span"]


class Adapter(DeprecatedCallAPI):
    """Base adapter: the generic behaviour, overridden per family. Subclasses set ``name`` and resolve modules.

    (relaykit 0.1's six per-call methods, deprecated, come from :class:`relaykit.legacy.DeprecatedCallAPI`.)"""

    name: str = "base"
    #: hidden state at position i predicts token i + token_shift (1 for Fast-dLLM v2, 0 for LLaDA/MDLM)
    token_shift: int = 0
    #: how the backbone attends while decoding: "bidirectional" (LLaDA, MDLM) or "block_causal" (Fast-dLLM v2,
    #: BD3-LM: a position sees the prompt, earlier blocks and its own block)
    attention: Attention = "bidirectional"
    #: attention patterns relaykit.generate may ask of this adapter's backbone (the HF default passes 4D masks)
    attentions: tuple[str, ...] = ("bidirectional", "block_causal")
    #: cache modes relaykit.generate may use with this adapter ("prefix", "dual", "sub_block")
    decode_modes: tuple[str, ...] = ("prefix", "dual", "sub_block")

    # --------------------------------------------------------------- modules
    def embedding(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must implement embedding(model)")

    def final_hidden(self, model: nn.Module) -> tuple[nn.Module, Side]:
        raise NotImplementedError(f"{type(self).__name__} must implement final_hidden(model)")

    def call_module(self, model: nn.Module) -> nn.Module:
        """The module whose __call__ sees each forward's keyword arguments (caches, positions)."""
        return model

    # --------------------------------------------------------------- sizes and ids
    def embedding_size(self, model: nn.Module) -> int:
        emb = self.embedding(model)
        return embedding_width(emb, path=module_path(model, emb))

    def hidden_size(self, model: nn.Module) -> int:
        module, side = self.final_hidden(model)
        return hidden_width(module, side, path=module_path(model, module), model=model)

    def vocab_size(self, model: nn.Module) -> int | None:
        return embedding_vocab(self.embedding(model))

    def mask_token_id(self, model: nn.Module) -> int:
        value = config_mask_id(model)
        if value is not None:
            return value
        raise ValueError(
            f"unknown mask token id for {type(model).__name__}: its config has no mask_token_id; "
            f"pass mask_token_id=... to attach()"
        )

    def tied(self, model: nn.Module) -> bool | None:
        """Whether the LM head shares the embedding's weight (None when unknown)."""
        getter = getattr(model, "get_output_embeddings", None)
        head = getter() if callable(getter) else None
        if head is None:
            return None
        emb = self.embedding(model)
        return getattr(head, "weight", None) is getattr(emb, "weight", object())

    # --------------------------------------------------------------- binding and the per-call description
    def bind(self, model: nn.Module) -> Binding:
        """Resolve what the hooks need on ``model``, once, at attach. Families that read per-call facts from their
        modules (BD3-LM's cache length) return a :class:`Binding` subclass holding them; the adapter itself keeps
        no per-model state, so one adapter object may serve many models."""
        final, side = self.final_hidden(model)
        return Binding(self.embedding(model), final, side, self.call_module(model))

    @bridges_legacy
    def plan_call(
        self, binding: Binding, ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], *, mask_token_id: int
    ) -> CallPlan:
        """What one backbone call means for relay: the one question the hooks ask an adapter per call.

        ``ids`` (b, q) are the token ids the embedding was called with; ``args`` / ``kwargs`` are the arguments of
        the call module's ``__call__``. HF convention: positions from explicit ``position_ids`` or the cache length
        (:func:`hf_positions`, with their Python range :func:`hf_span`), the ``past_key_values`` cache, and
        relay-free rows where no mask token is fed (:func:`clean_rows`: a prompt prefill or a commit pass).
        Families override this for their own arguments.
        """
        if self._legacy_overrides:  # a relaykit 0.1-style subclass (deprecated): its old methods describe the call
            return legacy_plan(self, binding, ids, args, kwargs, mask_token_id=mask_token_id)
        cache = cache_argument(binding.call_module, args, kwargs)  # cache= / past_key_values= / positional
        positions = hf_positions(ids, kwargs, cache)  # (b, q)
        bare = clean_rows(ids, mask_token_id)  # (b, q)
        return CallPlan(positions, bare, cache=cache, uses_cache=cache is not None, span=hf_span(ids, kwargs, cache))

    def clean_layout(self, model: nn.Module) -> bool:
        """Whether ``model`` trains on a ``[x_t ; x_0]`` input (block diffusion): then pass ``clean_ids=x0``."""
        return False

    def call_backbone(
        self, model: nn.Module, input_ids: Tensor, *, clean_ids: Tensor | None = None, **kwargs: Any
    ) -> Any:
        """Run the backbone for ``relay(input_ids, ...)``: ``model(input_ids, **kwargs)`` unless overridden.

        ``clean_ids`` (b, q), the clean sequence x_0, asks for the family's ``[x_t ; x_0]`` training layout
        (where ``clean_layout(model)``); the output's logits cover the noisy half.
        """
        if clean_ids is not None:
            raise TypeError(
                f"adapter {self.name!r} has no [x_t ; x_0] training layout for {type(model).__name__}; "
                f"call relay(input_ids, ...) without clean_ids"
            )
        return model(input_ids, **kwargs)

    def logits(self, output: Any) -> Tensor:
        """The logits tensor (b, q, V) in a backbone's output."""
        if isinstance(output, Tensor):
            return output
        logits = getattr(output, "logits", None)
        if isinstance(logits, Tensor):
            return logits
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
            return output[0]
        raise TypeError(f"cannot find logits in a backbone output of type {type(output).__name__}")

    # --------------------------------------------------------------- decoding loop (relaykit.generate)
    def decode_kwargs(self, model: nn.Module, call: DecodeCall) -> dict[str, Any]:
        """Backbone keyword arguments for one call of :func:`relaykit.generate` (HF convention by default).

        Passes ``past_key_values`` / ``use_cache`` only when a cache is involved, ``position_ids`` only when they
        differ from the backbone's default (cache length + arange: a call that replaces cached columns), and a 4D
        attention mask (bool for sdpa, additive for eager) only when the call needs one (block-causal segments,
        or replaced cache columns: "replace in place" is emulated by appending the fresh keys, masking the stale
        columns and cropping afterwards). Override for families with their own cache arguments.
        """
        kwargs: dict[str, Any] = {}
        if call.cache is not None or call.store or call.kind == "block":  # a block call keeps its keys (block cache)
            name = cache_parameter(model)  # "cache" (transformers 5.x) or "past_key_values"
            if name is None:
                raise TypeError(
                    f"{type(model).__name__}.forward takes no KV cache (no cache= or past_key_values=), so relaykit "
                    f"cannot give it one; "
                    f"decode with use_cache=False, or use an adapter that knows this family's cache arguments"
                )
            kwargs["use_cache"] = True
            if call.start != call.cache_length:  # else the HF default (cache length + arange) gives the same ones,
                kwargs["position_ids"] = call.position_ids()  # and the plan's span stays in Python ints (no sync)
            if call.cache is not None:
                kwargs[name] = call.cache
        elif _accepts(model, "use_cache"):
            kwargs["use_cache"] = False
        dtype = float_dtype_device(model)[0] or torch.float32
        eager = getattr(getattr(model, "config", None), "_attn_implementation", None) == "eager"
        mask = call.attention_mask(dtype, additive=eager)
        if mask is not None:
            kwargs["attention_mask"] = mask
        return kwargs

    def decode_cache(self, output: Any, call: DecodeCall) -> Any:
        """The KV cache after a call (HF: ``output.past_key_values``); None when the output carries none."""
        cache = output_cache(output)
        return cache if cache is not None else call.cache

    def decode_block_cache(self, output: Any, call: DecodeCall) -> Any:
        """The block cache to keep after a call when the family holds it apart from the KV cache (Fast-dLLM v2's
        ``block_past_key_values``); the HF convention appends the block to the KV cache, so none by default."""
        return call.block_cache

    def crop_cache(self, cache: Any, length: int) -> Any:
        """The cache keeping only positions < ``length`` (HF ``crop``, or slicing a list of (k, v))."""
        return crop_cache(cache, length)

    # --------------------------------------------------------------- serialisation
    def to_config(self) -> dict[str, Any]:
        """JSON-able description saved in relay_config.json so from_pretrained can rebuild the adapter."""
        return {"name": self.name}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """What this adapter resolves on ``model`` (used by relaykit.inspect)."""
        emb = self.embedding(model)
        fh, side = self.final_hidden(model)
        try:
            mask: int | str = self.mask_token_id(model)
        except ValueError as e:
            mask = f"unresolved ({e})"
        return {
            "adapter": self.name,
            "embedding": f"{module_path(model, emb)} ({type(emb).__name__})",
            "final_hidden": f"{module_path(model, fh)} ({type(fh).__name__}, {side})",
            "call_module": module_path(model, self.call_module(model)) or "<model>",
            "embedding_size": self.embedding_size(model),
            "hidden_size": self.hidden_size(model),
            "vocab_size": self.vocab_size(model),
            "mask_token_id": mask,
            "tied_embeddings": self.tied(model),
            "token_shift": self.token_shift,
            "attention": self.attention,
        }


def _accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` takes keyword ``name`` (or **kwargs); the signature is read once per forward
    function (``relaykit.cachearg.forward_parameters``), not on every decoding call."""
    params = forward_parameters(model)
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
