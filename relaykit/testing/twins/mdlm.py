"""Twin of MDLM (kuleshov-group/mdlm ``models/dit.py``; HF remote code ``kuleshov-group/mdlm-owt``).

Kept from upstream (read from the public code, written here):
- ``DIT(config, vocab_size)`` with ``config.model.{hidden_size, n_heads, cond_dim, n_blocks, dropout}``:
  ``vocab_embed`` (``EmbeddingLayer`` whose ``.embedding`` is a raw [V, D] nn.Parameter indexed as
  ``embedding[ids]``), ``sigma_map`` (``TimestepEmbedder``), ``rotary_emb``, ``blocks[i]`` (``DDiTBlock`` with
  adaLN modulation, bidirectional), ``output_layer`` (``DDitFinalLayer``: ``norm_final`` + adaLN + ``linear``,
  called as ``output_layer(x, c)``: the final hidden state is its INPUT). adaLN and the output layer are
  zero-initialised, as upstream. ``DIT.forward(indices, sigma)`` -> logits (b, n, V); no cache, no attention mask.
- HF ``MDLM(PreTrainedModel)`` with ``.backbone`` (``DITBackbone``, same children) and
  ``forward(input_ids, timesteps, output_hidden_states, return_dict)``; config ``hidden_dim``, ``time_conditioning``
  (sigma is zeroed when false).
- Mask index = vocab_size - 1 (the tokenizer vocabulary plus one added mask token).

Differences: SDPA replaces flash-attn (so it runs on CPU); no bf16 autocast; LayerNorm keeps float64 inputs in
float64 (upstream upcasts to float32); ``config`` may be a plain nested dict (upstream: omegaconf).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from relaykit.testing.twins.shared import masked_lm_output, rope, seeded


def _namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    return value


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class Rotary(nn.Module):
    """cos/sin of shape (1, n, 3, 1, hd) for packed qkv; the v slot is the identity (cos 1, sin 0)."""

    def __init__(self, dim: int, base: float = 10_000) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).double() / dim)))

    def forward(self, x: Tensor, seq_dim: int = 1) -> tuple[Tensor, Tensor]:
        t = torch.arange(x.shape[seq_dim], device=x.device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (n, hd)
        cos = emb.cos()[None, :, None, None, :].repeat(1, 1, 3, 1, 1)
        sin = emb.sin()[None, :, None, None, :].repeat(1, 1, 3, 1, 1)
        cos[:, :, 2].fill_(1.0)
        sin[:, :, 2].fill_(0.0)
        return cos, sin


def apply_rotary_pos_emb(qkv: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return rope(qkv, cos.to(qkv.dtype), sin.to(qkv.dtype))


class LayerNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones([dim]))
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.to(torch.promote_types(x.dtype, torch.float32)), [self.dim])
        return x * self.weight[None, None, :]


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000) -> Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
        args = t[:, None].double() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class EmbeddingLayer(nn.Module):
    """Token embedding as a raw parameter indexed by ids (not an nn.Embedding)."""

    def __init__(self, dim: int, vocab_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty((vocab_dim, dim)))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.embedding[x]


class DDiTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim, bias=True),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * dim, dim, bias=True),
        )
        self.dropout2 = nn.Dropout(dropout)
        self.dropout = dropout
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim, bias=True)
        self.adaLN_modulation.weight.data.zero_()
        self.adaLN_modulation.bias.data.zero_()

    def forward(self, x: Tensor, rotary_cos_sin: tuple[Tensor, Tensor], c: Tensor, seqlens: Any = None) -> Tensor:
        b, n, d = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(6, 2)
        x_skip = x
        x = modulate(self.norm1(x), shift_msa, scale_msa)
        qkv = self.attn_qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads)  # (b, n, 3, h, hd)
        qkv = apply_rotary_pos_emb(qkv, *rotary_cos_sin)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (b, h, n, hd)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=False).transpose(1, 2).reshape(b, n, d)
        x = x_skip + gate_msa * F.dropout(self.attn_out(x), self.dropout, self.training)
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + gate_mlp * F.dropout(h, self.dropout, self.training)


class DDitFinalLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm_final = LayerNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.linear.weight.data.zero_()
        self.linear.bias.data.zero_()
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden_size, bias=True)
        self.adaLN_modulation.weight.data.zero_()
        self.adaLN_modulation.bias.data.zero_()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DIT(nn.Module):
    """MDLM's diffusion transformer: ``DIT(config, vocab_size)(indices, sigma)`` -> logits (b, n, V)."""

    def __init__(self, config: Any, vocab_size: int) -> None:
        super().__init__()
        config = _namespace(config)
        self.config = config
        self.vocab_size = vocab_size
        m = config.model
        self.vocab_embed = EmbeddingLayer(m.hidden_size, vocab_size)
        self.sigma_map = TimestepEmbedder(m.cond_dim)
        self.rotary_emb = Rotary(m.hidden_size // m.n_heads)
        self.blocks = nn.ModuleList(
            DDiTBlock(m.hidden_size, m.n_heads, m.cond_dim, dropout=m.dropout) for _ in range(m.n_blocks)
        )
        self.output_layer = DDitFinalLayer(m.hidden_size, vocab_size, m.cond_dim)
        self.scale_by_sigma = getattr(m, "scale_by_sigma", True)

    def forward(self, indices: Tensor, sigma: Tensor) -> Tensor:
        x = self.vocab_embed(indices)  # (b, n, d)
        c = F.silu(self.sigma_map(sigma))  # (b, cond)
        rotary_cos_sin = self.rotary_emb(x)
        for block in self.blocks:
            x = block(x, rotary_cos_sin, c, seqlens=None)
        return self.output_layer(x, c)


class MDLMConfig(PretrainedConfig):
    model_type = "mdlm"

    def __init__(
        self,
        vocab_size: int = 50258,
        model_length: int = 1024,
        hidden_dim: int = 768,
        cond_dim: int = 128,
        n_blocks: int = 12,
        n_heads: int = 12,
        dropout: float = 0.1,
        time_conditioning: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.model_length = model_length
        self.hidden_dim = hidden_dim
        self.cond_dim = cond_dim
        self.n_blocks = n_blocks
        self.n_heads = n_heads
        self.dropout = dropout
        self.time_conditioning = time_conditioning


class DITBackbone(nn.Module):
    def __init__(self, config: MDLMConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab_embed = EmbeddingLayer(config.hidden_dim, config.vocab_size)
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = Rotary(config.hidden_dim // config.n_heads)
        self.blocks = nn.ModuleList(
            DDiTBlock(config.hidden_dim, config.n_heads, config.cond_dim, dropout=config.dropout)
            for _ in range(config.n_blocks)
        )
        self.output_layer = DDitFinalLayer(config.hidden_dim, config.vocab_size, config.cond_dim)

    def forward(
        self, indices: Tensor, sigma: Tensor, output_hidden_states: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        if not self.config.time_conditioning:
            sigma = torch.zeros_like(sigma)
        all_hidden_states = []
        x = self.vocab_embed(indices)
        if output_hidden_states:
            all_hidden_states.append(x)
        c = F.silu(self.sigma_map(sigma))
        rotary_cos_sin = self.rotary_emb(x)
        for block in self.blocks:
            x = block(x, rotary_cos_sin, c)
            if output_hidden_states:
                all_hidden_states.append(x)
        return self.output_layer(x, c), all_hidden_states


class MDLM(PreTrainedModel):
    config_class = MDLMConfig
    base_model_prefix = "mdlm"

    def __init__(self, config: MDLMConfig) -> None:
        super().__init__(config)
        self.backbone = DITBackbone(config)

    def _init_weights(self, module: nn.Module) -> None:  # upstream initialisation happens in the modules
        pass

    def forward(
        self,
        input_ids: Tensor | None = None,
        timesteps: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MaskedLMOutput | Tensor | tuple:
        if timesteps is None:
            timesteps = torch.zeros(input_ids.shape[0], device=input_ids.device)
        logits, all_hidden_states = self.backbone(input_ids, timesteps, output_hidden_states=bool(output_hidden_states))
        return masked_lm_output(logits, all_hidden_states, output_hidden_states, return_dict)


def tiny_dit(
    *,
    vocab: int = 48,
    width: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> DIT:
    """A random tiny MDLM DIT (mask index = vocab - 1), zero-initialised branches perturbed, in eval mode."""
    config = {"model": {"hidden_size": width, "n_heads": heads, "cond_dim": 16, "n_blocks": layers, "dropout": 0.0}}
    return seeded(lambda: DIT(config, vocab_size=vocab), seed=seed, dtype=dtype, perturb=True)


def tiny_hf_mdlm(
    *,
    vocab: int = 48,
    width: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> MDLM:
    """A random tiny HF MDLM, zero-initialised branches perturbed, in eval mode."""
    config = MDLMConfig(
        vocab_size=vocab, model_length=64, hidden_dim=width, cond_dim=16, n_blocks=layers, n_heads=heads, dropout=0.0
    )
    return seeded(lambda: MDLM(config), seed=seed, dtype=dtype, perturb=True)
