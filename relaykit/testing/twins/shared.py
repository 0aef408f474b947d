"""Building blocks several twins share, written once (each twin's module tree keeps its upstream names).

Legend: b batch, h heads, n positions, hd head width, d model width.

- :func:`rope` / :func:`apply_rotary_pos_emb`: RoPE's half rotation (LLaDA, MDLM, BD3-LM, Fast-dLLM v2, Dream);
- :class:`QwenAttentionProjections`: the Qwen2-style grouped-query projections (``q_proj`` / ``k_proj`` /
  ``v_proj`` biased, ``o_proj`` not) under Fast-dLLM v2's and Dream's attention;
- :class:`QwenMLP`: the gated MLP (``gate_proj`` / ``up_proj`` / ``down_proj``) of Fast-dLLM v2 and Dream;
- :func:`block_diff_mask` / :func:`block_causal_mask`: the block-diffusion attention masks (BD3-LM, Fast-dLLM v2);
- :func:`masked_lm_output`: what MDLM's and BD3-LM's HF wrappers return (``return_dict`` / hidden states);
- :func:`seeded`: build a tiny twin under a seed (optionally perturbed), in a dtype, in eval mode.

Example::

    >>> import torch
    >>> idx = torch.arange(4)
    >>> block_causal_mask(idx[:, None], idx[None, :], 2).int().tolist()   # blocks of 2 see earlier blocks
    [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_outputs import MaskedLMOutput

from relaykit.testing.twins import perturb_

M = TypeVar("M", bound=nn.Module)


def rotate_half(x: Tensor) -> Tensor:
    """(..., hd) -> (..., hd): the two halves of the last dimension as (-x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on ``x`` with ``cos`` / ``sin`` already broadcastable to it."""
    return x * cos + rotate_half(x) * sin


def apply_rotary_pos_emb(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """HF-style RoPE: q, k (b, h, n, hd) with cos, sin (b, n, hd)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (b, 1, n, hd)
    return rope(q, cos, sin), rope(k, cos, sin)


class QwenAttentionProjections(nn.Module):
    """Qwen2's attention projections with grouped-query heads; subclasses add RoPE, caches and the attention."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (b, n, d) -> q (b, h, n, hd), k and v (b, kv, n, hd)."""
        shape = (x.shape[0], x.shape[1], -1, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # (b, h, n, hd)
        k = self.k_proj(x).view(shape).transpose(1, 2)  # (b, kv, n, hd)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        return q, k, v

    def repeat_kv(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v (b, kv, n, hd) -> (b, h, n, hd): each key/value head serves h / kv query heads."""
        rep = self.num_heads // self.num_kv_heads
        return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)

    def output(self, out: Tensor) -> Tensor:
        """Attention output (b, h, n, hd) -> (b, n, d)."""
        b, _, n, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class QwenMLP(nn.Module):
    """The gated MLP ``down(silu(gate(x)) * up(x))`` of Qwen2-style layers."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def block_diff_mask(q_idx: Tensor, kv_idx: Tensor, block_size: int, n: int) -> Tensor:
    """Block-diffusion training mask over ``[x_t ; x_0]`` (2n): x_t block-diagonal, x_t -> earlier x_0 blocks,
    x_0 block-causal. True = attend."""
    x0_q, x0_kv = q_idx >= n, kv_idx >= n
    block_q = torch.where(x0_q, q_idx - n, q_idx) // block_size
    block_kv = torch.where(x0_kv, kv_idx - n, kv_idx) // block_size
    diagonal = (block_q == block_kv) & (x0_q == x0_kv)
    offset_causal = (block_q > block_kv) & x0_kv & ~x0_q
    clean_causal = (block_q >= block_kv) & x0_kv & x0_q
    return diagonal | offset_causal | clean_causal


def block_causal_mask(q_idx: Tensor, kv_idx: Tensor, block_size: int) -> Tensor:
    """Block-causal mask: a position sees its own block and every earlier one. True = attend."""
    return (q_idx // block_size) >= (kv_idx // block_size)


def seeded(build: Callable[[], M], *, seed: int, dtype: torch.dtype, perturb: bool = False) -> M:
    """``build()`` under ``torch.manual_seed(seed)``, perturbed (:func:`~relaykit.testing.twins.perturb_`) when
    upstream zero-initialises branches, cast to ``dtype``, in eval mode."""
    torch.manual_seed(seed)
    model = build()
    if perturb:
        perturb_(model, seed=seed)
    return model.to(dtype).eval()


def masked_lm_output(
    logits: Tensor, hidden_states: list[Tensor], output_hidden_states: bool | None, return_dict: bool | None
) -> MaskedLMOutput | Tensor | tuple[Tensor, list[Tensor]]:
    """An HF masked-LM wrapper's return value: ``MaskedLMOutput`` unless ``return_dict is False`` (then the logits,
    with the hidden states when asked for)."""
    if return_dict is False:
        return (logits, hidden_states) if output_hidden_states else logits
    return MaskedLMOutput(logits=logits, hidden_states=hidden_states if output_hidden_states else None)
