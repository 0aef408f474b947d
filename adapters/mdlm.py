"""MDLMAdapter: relay on MDLM's DiT (kuleshov-group/mdlm), its HF wrapper, and BD3-LM (kuleshov-group/bd3lms).

Where things are:

* embedding: ``vocab_embed`` (``backbone.vocab_embed`` in the HF ``MDLM`` / ``BD3LM`` classes), whose table is a
  raw parameter ``.embedding`` [V, D] indexed by ids, not an nn.Embedding: relay adds to that module's output;
* final hidden: the INPUT of ``output_layer`` (``output_layer(x, c)``: norm + adaLN + linear), pre-norm;
* mask id: the argument, else ``config.mask_token_id`` / ``mask_index`` when present, else vocab_size - 1 (MDLM adds
  one mask token after the tokenizer's vocabulary);
* sigma / timesteps pass through unchanged; when none is given, sigma = 0 is passed (what MDLM's sampler feeds with
  the default ``time_conditioning=False``). No token shift, no attention mask.

BD3-LM (``cross_attn``, ``block_size``):

* training input ``[x_t ; x_0]`` (2n): only the noisy half takes part in relay; ``relay(z, clean_ids=x0)`` builds it;
* cache-free sampling feeds the whole sequence: relay runs in the active (last) block only, earlier blocks are
  relay-free context, exactly as with the cache, so the two give the same logits (contract 5);
* KV cache: each ``sample_mode`` call feeds the active block at positions ``cache_idx .. cache_idx + q - 1``
  (read from the first block layer); the clean commit pass (``store_kv=True``) runs relay-free (contract 4).
  Sampling past ``model_length`` slides the cache window, which relay does not follow (positions would repeat).

MDLM's ``ddpm_cache`` sampler reuses the previous step's output when no token changed. With relay the next forward
differs even when tokens do not (h has moved), so the reuse is no longer exact: :func:`ddpm_cache_valid` says when
it still is (never while relay is active), and samplers should recompute otherwise.

Example::

    relay = relaykit.attach(dit)                                   # detected: DIT / MDLM / BD3LM
    out = relay(x, state=state, sigma=sigma)                        # DIT.forward(indices, sigma)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from relaykit.adapters._family import FamilyAdapter
from relaykit.cachearg import cache_argument
from relaykit.kvcache import DecodeCall
from relaykit.plan import Binding, CallPlan
from relaykit.resolve import Side, resolve_module


class _Relay(Protocol):
    """What :func:`ddpm_cache_valid` reads of a RelayModel (kept structural: adapters sit below the model)."""

    @property
    def attached(self) -> bool: ...

    @property
    def enabled(self) -> bool: ...


_CLASSES = ("DIT", "MDLM", "BD3LM", "DITBackbone")
_TYPES = ("mdlm", "bd3lm")


def is_mdlm(model: nn.Module) -> bool:
    """MDLM's DIT, the HF MDLM / BD3LM classes, or a config with model_type "mdlm" / "bd3lm"."""
    config = getattr(model, "config", None)
    known = type(model).__name__ in _CLASSES or getattr(config, "model_type", None) in _TYPES
    return known and _root(model) is not None


def _root(model: nn.Module) -> str | None:
    """'' when the DiT modules sit on the model itself, 'backbone.' for the HF wrappers, else None."""
    for prefix, owner in (("", model), ("backbone.", getattr(model, "backbone", None))):
        if isinstance(owner, nn.Module) and hasattr(owner, "vocab_embed") and hasattr(owner, "output_layer"):
            return prefix
    return None


@dataclass(frozen=True, eq=False)
class MDLMBinding(Binding):
    """An MDLM / BD3-LM attachment: BD3-LM's first block (its ``kv_cache`` / ``cache_idx``) and block size."""

    first_block: nn.Module | None = None
    block_size: int | None = None  # BD3-LM with the [x_t ; x_0] layout; None for MDLM


class MDLMAdapter(FamilyAdapter):
    """MDLM / BD3-LM family adapter. ``mask_token_id`` overrides the default vocab_size - 1."""

    name = "mdlm"
    token_shift = 0
    attention = "bidirectional"
    decode_modes: tuple[str, ...] = ()  # no cache relaykit.generate can drive (BD3-LM: use its own sampler)

    # --------------------------------------------------------------- modules
    def _prefix(self, model: nn.Module) -> str:
        prefix = _root(model)
        if prefix is None:
            raise AttributeError(
                f"{type(model).__name__} is not laid out like MDLM: expected 'vocab_embed' and 'output_layer' on the "
                f"model (DIT) or on 'backbone' (HF MDLM / BD3LM); use the generic adapter for other models"
            )
        return prefix

    def _dit(self, model: nn.Module) -> nn.Module:
        """The module holding the DiT children: the model itself (DIT) or its ``backbone`` (HF wrappers)."""
        return model.backbone if self._prefix(model) else model

    def embedding(self, model: nn.Module) -> nn.Module:
        return resolve_module(model, f"{self._prefix(model)}vocab_embed", role="embedding")

    def final_hidden(self, model: nn.Module) -> tuple[nn.Module, Side]:
        return resolve_module(model, f"{self._prefix(model)}output_layer", role="final_hidden"), "input"

    def hidden_size(self, model: nn.Module) -> int:
        return self.embedding_size(model)  # the DiT keeps one width from vocab_embed to output_layer

    def default_mask_id(self, model: nn.Module) -> int:
        vocab = self.vocab_size(model)
        if vocab is None:
            raise ValueError(f"cannot read the vocabulary of {type(model).__name__}; pass mask_token_id=...")
        return vocab - 1  # MDLM appends one mask token to the tokenizer's vocabulary

    def tied(self, model: nn.Module) -> bool | None:
        return False  # vocab_embed and output_layer.linear never share weights

    # --------------------------------------------------------------- BD3-LM specifics
    def _block_diffusion(self, model: nn.Module) -> tuple[int, int] | None:
        """(block_size, model_length) of a BD3-LM with the [x_t ; x_0] layout (``cross_attn``); None for MDLM."""
        config = getattr(self._dit(model), "config", None)
        if not getattr(config, "cross_attn", False):
            return None
        return int(config.block_size), int(config.model_length)

    # --------------------------------------------------------------- binding and the per-call description
    def bind(self, model: nn.Module) -> MDLMBinding:
        """The hooked modules, the DiT's first block (BD3-LM keeps its cache length there) and the block layout."""
        base = super().bind(model)
        blocks = getattr(self._dit(model), "blocks", None)
        layout = self._block_diffusion(model)
        return MDLMBinding(
            base.embedding,
            base.final_hidden,
            base.side,
            base.call_module,
            first_block=blocks[0] if blocks is not None and len(blocks) else None,
            block_size=None if layout is None else layout[0],
        )

    def plan_call(
        self, binding: Binding, ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], *, mask_token_id: int
    ) -> CallPlan:
        """MDLM: the whole sequence at 0 .. q-1. BD3-LM: relay on the noisy half of ``[x_t ; x_0]`` (training) or on
        the active (last) block (sampling), at ``cache_idx + arange`` when its module-held KV cache is in use; the
        commit pass (``store_kv=True``) stores a finished block: relay-free. MDLM has no cache to protect, so every
        other call takes relay wherever a state exists."""
        if not isinstance(binding, MDLMBinding):
            raise TypeError(f"MDLMAdapter.plan_call needs the MDLMBinding its bind() returns, got {type(binding)}")
        b, q = ids.shape
        first = binding.first_block
        sampling = bool(kwargs.get("sample_mode"))
        cached = sampling and getattr(first, "kv_cache", None) is not None  # BD3-LM's cache lives on its modules
        columns = None
        if binding.block_size is not None:  # BD3-LM
            columns = slice(max(q - binding.block_size, 0), q) if sampling else slice(0, q // 2)
        start = int(first.cache_idx) if cached else 0  # the active block sits after the committed ones
        positions = (start + torch.arange(q, device=ids.device)).expand(b, q)  # (b, q)
        if columns is not None:
            positions = positions[:, columns]  # (b, q')
        bare = torch.full_like(positions, bool(kwargs.get("store_kv")), dtype=torch.bool)
        cache = cache_argument(binding.call_module, args, kwargs)
        lo = start + (0 if columns is None else columns.indices(q)[0])
        span = (lo, lo + positions.shape[1])  # Python ints: no sync
        return CallPlan(
            positions, bare, columns=columns, cache=cache, uses_cache=cached or cache is not None, span=span
        )

    def clean_layout(self, model: nn.Module) -> bool:
        return self._block_diffusion(model) is not None  # BD3-LM with cross_attn

    def call_backbone(
        self, model: nn.Module, input_ids: Tensor, *, clean_ids: Tensor | None = None, **kwargs: Any
    ) -> Any:
        args: tuple[Any, ...] = ()
        if not any(k in kwargs for k in ("sigma", "timesteps")):
            sigma = torch.zeros(input_ids.shape[0], device=input_ids.device)  # time_conditioning=False default
            if self._prefix(model):
                kwargs["timesteps"] = sigma
            else:
                args = (sigma,)
        if clean_ids is not None:
            bd = self._block_diffusion(model)
            if bd is None:
                raise TypeError(
                    f"{type(model).__name__} has no [x_t ; x_0] training layout (config.cross_attn is not set); "
                    f"call relay(input_ids, ...) without clean_ids"
                )
            n = bd[1]
            if clean_ids.shape != input_ids.shape or input_ids.shape[1] != n:
                raise ValueError(
                    f"BD3-LM trains on [x_t ; x_0] of model_length {n} each; got input_ids "
                    f"{tuple(input_ids.shape)} and clean_ids {tuple(clean_ids.shape)}"
                )
            input_ids = torch.cat([input_ids, clean_ids], dim=1)  # (b, 2n)
        return model(input_ids, *args, **kwargs)

    def decode_kwargs(self, model: nn.Module, call: DecodeCall) -> dict[str, Any]:
        """Cache-free full-sequence calls; sigma 0 is supplied by :meth:`call_backbone`."""
        if self._block_diffusion(model) is not None:
            raise ValueError(
                "relaykit.generate does not drive BD3-LM (its cache lives on its modules); run its own "
                "semi-autoregressive sampler inside relay.session(), which relay follows"
            )
        return {}


def ddpm_cache_valid(
    x: Tensor, x_next: Tensor, *, time_conditioning: bool = False, relay: _Relay | None = None
) -> bool:
    """Whether MDLM's ``ddpm_cache`` sampler may reuse the previous step's p(x0) for the next step.

    Upstream reuses it when no token changed and the model is not time-conditioned. With a relay attached and
    enabled the next forward sees a new h (in a session or through explicit ``state=`` passing alike), so its
    output changes even when the tokens do not: the reuse would silently skip relay steps, and this returns False.
    Example (in MDLM's ``_sample`` loop)::

        if not ddpm_cache_valid(x, x_next, time_conditioning=tc, relay=relay):
            p_x0_cache = None
    """
    if relay is not None and relay.attached and relay.enabled:
        return False
    return torch.equal(x_next, x) and not time_conditioning
