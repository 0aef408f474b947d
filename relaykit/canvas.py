"""The canvas of :func:`relaykit.generate`: argument checks, the canvas layout, blocks, sub-blocks, segments.

Legend: b batch, P prompt length, T canvas length (prompt + new tokens), B block length.

The canvas is the prompt followed by ``max_new_tokens`` mask tokens (or, with ``max_new_tokens=0``, the input
itself, infilled). It is decoded in blocks of ``block_size`` left to right; attention segments (the cached
context, the rest of the prompt, each block) describe what a block-causal backbone lets each position see.

Example::

    >>> block_spans(4, 12, 4)
    [(4, 8), (8, 12)]
    >>> sub_block_spans(4, 8, 2)
    [(4, 6), (6, 8)]
"""

from __future__ import annotations

import torch
from torch import Tensor

from relaykit.adapter import Adapter
from relaykit.adapter import _accepts as accepts
from relaykit.causality import native_attention
from relaykit.checks import is_int
from relaykit.kvcache import ATTENTIONS, Attention
from relaykit.model import RelayCore

Span = tuple[int, int]


def build_canvas(
    relay: RelayCore, input_ids: Tensor, max_new_tokens: int, block_size: int | None
) -> tuple[Tensor, int]:
    """The canvas x (b, T) = prompt + masks, and where decoding starts (P; 0 when infilling)."""
    if isinstance(input_ids, Tensor) and (input_ids.is_floating_point() or input_ids.is_complex()):
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}; tokenize the prompt")
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, length) tensor of token ids, got {got}")
    vocab = relay.adapter.vocab_size(relay.backbone)
    if input_ids.numel():
        lo, hi = (int(v) for v in input_ids.aminmax())
        if lo < 0 or (vocab is not None and hi >= vocab):
            raise ValueError(
                f"input_ids hold token ids {lo}..{hi} but the embedding has a vocabulary of {vocab} "
                f"(ids 0..{vocab - 1 if vocab is not None else '?'}); check the tokenizer against the model"
            )
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(
            f"max_new_tokens must be an int >= 0 (0 infills the masks in input_ids), got {max_new_tokens!r}"
        )
    b, prompt = input_ids.shape
    mask_id = relay.mask_token_id
    if max_new_tokens == 0 and prompt == 0:
        raise ValueError("nothing to decode: input_ids is empty and max_new_tokens=0")
    limit = max_positions(relay)
    if limit is not None and prompt + max_new_tokens > limit:
        raise ValueError(
            f"the prompt ({prompt} tokens) plus max_new_tokens ({max_new_tokens}) is a canvas of "
            f"{prompt + max_new_tokens} positions, longer than the backbone's {limit} positions; shorten the prompt "
            f"or ask for fewer tokens"
        )
    canvas_start = prompt if max_new_tokens > 0 else 0
    masked_prompt = (input_ids == mask_id).any(0).nonzero().flatten()
    if max_new_tokens > 0 and masked_prompt.numel():
        raise ValueError(
            f"input_ids hold mask tokens at prompt positions {masked_prompt[:8].tolist()} and max_new_tokens="
            f"{max_new_tokens}: the prompt must be clean when generating after it; to infill them pass "
            f"max_new_tokens=0 (the whole input is then the canvas)"
        )
    pad = torch.full((b, max_new_tokens), mask_id, dtype=input_ids.dtype, device=input_ids.device)
    return torch.cat([input_ids, pad], 1).long(), canvas_start  # (b, T)


def max_positions(relay: RelayCore) -> int | None:
    config = getattr(relay.backbone, "config", None)
    for name in ("max_position_embeddings", "max_sequence_length", "model_length", "n_positions"):
        value = getattr(config, name, None)
        if is_int(value) and value > 0:
            return value
    return None


def canvas_maskable(maskable: Tensor | None, b: int, prompt: int, total: int, device: torch.device) -> Tensor:
    if maskable is None:
        return torch.ones(b, total, dtype=torch.bool, device=device)
    if not isinstance(maskable, Tensor) or maskable.dtype != torch.bool or maskable.dim() != 2:
        raise ValueError("maskable must be a bool tensor of shape (batch, prompt length) or (batch, canvas length)")
    if maskable.shape[0] != b or maskable.shape[1] not in (prompt, total):
        raise ValueError(
            f"maskable has shape {tuple(maskable.shape)} but input_ids need ({b}, {prompt}) or, with the new tokens, "
            f"({b}, {total})"
        )
    maskable = maskable.to(device)
    if maskable.shape[1] == prompt:
        maskable = torch.cat([maskable, torch.ones(b, total - prompt, dtype=torch.bool, device=device)], 1)
    return maskable


def cache_mode(use_cache: bool | str, block_size: int | None) -> str | None:
    if use_cache is False or use_cache is None:
        return None
    mode = "prefix" if use_cache is True else use_cache
    if mode not in ("prefix", "dual", "sub_block"):
        raise ValueError(f"use_cache must be False, True, 'prefix', 'dual' or 'sub_block', got {use_cache!r}")
    if block_size is None:
        raise ValueError(f"use_cache={use_cache!r} caches committed blocks: pass block_size=... as well")
    return mode


def decode_attention(relay: RelayCore, attention: str | None) -> Attention:
    chosen = attention if attention is not None else getattr(relay.adapter, "attention", "bidirectional")
    if chosen not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {chosen!r}")
    supported = getattr(relay.adapter, "attentions", ATTENTIONS)
    if chosen not in supported:
        raise ValueError(
            f"adapter {relay.adapter.name!r} cannot decode with attention={chosen!r}: its backbone attends "
            f"{' or '.join(supported)} (its decode_kwargs pass no mask that would change that)"
        )
    return chosen  # type: ignore[return-value]


def block_spans(canvas_start: int, total: int, block_size: int | None) -> list[Span]:
    length = total - canvas_start
    if block_size is None:
        return [(canvas_start, total)]
    if not is_int(block_size) or block_size < 1:
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    if length % block_size:
        raise ValueError(
            f"block_size {block_size} does not divide the canvas of {length} positions "
            f"(positions {canvas_start}..{total - 1}); choose a block size that divides it, e.g. "
            f"{divisor_near(length, block_size)}"
        )
    return [(s, s + block_size) for s in range(canvas_start, total, block_size)]


def divisor_near(n: int, k: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), -d))


def sub_block_spans(s: int, e: int, size: int | None) -> list[Span]:
    if size is None:
        return [(s, e)]
    return [(a, min(a + size, e)) for a in range(s, e, size)]


def check_cache_mode(
    relay: RelayCore, mode: str | None, attention: str, sub: int | None, block: int, return_cache: bool
) -> None:
    if sub is not None:
        if not is_int(sub) or sub < 1 or block % sub:
            raise ValueError(f"sub_block_size must be a positive int dividing the block size {block}, got {sub!r}")
    if mode == "sub_block" and sub is None:
        raise ValueError("use_cache='sub_block' needs sub_block_size=... (Fast-dLLM v2 uses 8 for blocks of 32)")
    if mode is not None and mode not in getattr(relay.adapter, "decode_modes", ()):
        raise ValueError(
            f"adapter {relay.adapter.name!r} does not support use_cache={mode!r}; it supports "
            f"{list(getattr(relay.adapter, 'decode_modes', ()))}"
        )
    if mode == "dual" and attention != "bidirectional":
        raise ValueError(
            "use_cache='dual' is Fast-dLLM v1's cache for bidirectional backbones; with block-causal "
            "attention later blocks are never attended: use 'prefix'"
        )
    if mode == "sub_block" and attention != "block_causal":
        raise ValueError(
            "use_cache='sub_block' is Fast-dLLM v2's cache for block-causal backbones; pass "
            "attention='block_causal' or use 'prefix' / 'dual'"
        )
    if return_cache and not (mode in ("prefix", "sub_block") and attention == "block_causal"):
        raise ValueError(
            "return_cache=True needs an exact block cache: use_cache='prefix' or 'sub_block' with "
            "attention='block_causal'"
        )


def attention_segments(canvas_start: int, blocks: list[Span], cached: tuple[Span, ...], held: int) -> tuple[Span, ...]:
    """Attention segments: the cached context's own (``cached``, covering ``held`` positions), the rest of the
    prompt, then each block."""
    segments = list(cached)
    if canvas_start > held:
        segments.append((held, canvas_start))
    return tuple(segments + blocks)


def check_attention_given(relay: RelayCore, attention: str | None) -> str | None:
    """``attention`` as given; refused when it is None on an HF model that attends causally (generic adapter)."""
    if attention is None and relay.adapter.name == "generic" and native_attention(relay.backbone) == "causal":
        raise ValueError(
            f"{type(relay.backbone).__name__} attends causally when called without a mask, and relaykit.generate "
            f"decodes a masked diffusion canvas: pass attention='block_causal' (the prompt, earlier blocks and its "
            f"own block; Fast-dLLM v2 style, exact with use_cache) or attention='bidirectional' (the whole canvas); "
            f"relaykit then passes the 4D masks that give it"
        )
    return attention


def canvas_padding(relay: RelayCore, attention_mask: Tensor | None, input_ids: Tensor, total: int) -> Tensor | None:
    """Left padding (b, T) bool from a (b, P) attention mask of 1s (tokens) and 0s (padding), or None."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {got}")
    keep = attention_mask.to(input_ids.device)
    if not bool(((keep == 0) | (keep == 1)).all()):
        raise ValueError("attention_mask must hold 1 (token) and 0 (padding) only")
    keep = keep.bool()  # (b, P)
    if bool((keep[:, :-1] & ~keep[:, 1:]).any()):
        raise ValueError(
            "attention_mask must be LEFT padding (each row: 0s, then 1s): relaykit.generate appends the masks after "
            "the prompt, so right padding would sit inside the text; pad prompts on the left (tokenizer.padding_side="
            "'left')"
        )
    if input_ids.shape[1] and not bool(keep[:, -1].all()):
        raise ValueError("every row of attention_mask needs at least one prompt token (a 1 in its last column)")
    default = type(relay.adapter).decode_kwargs is Adapter.decode_kwargs  # the HF convention builds them from calls
    if not getattr(relay.adapter, "builds_masks_from_call", default):
        raise ValueError(
            f"attention_mask (padding) needs an adapter that builds its attention masks from relaykit's DecodeCall "
            f"(the Hugging Face convention); adapter {relay.adapter.name!r} passes its backbone's own arguments. "
            f"Decode rows of different lengths in separate calls"
        )
    if not accepts(relay.backbone, "attention_mask"):
        raise ValueError(
            f"attention_mask (padding) is passed to the backbone as a 4D mask, but "
            f"{type(relay.backbone).__name__}.forward takes no attention_mask; decode rows of different lengths in "
            f"separate calls"
        )
    pad = torch.zeros(input_ids.shape[0], total, dtype=torch.bool, device=input_ids.device)
    pad[:, : input_ids.shape[1]] = ~keep
    return pad if bool(pad.any()) else None
