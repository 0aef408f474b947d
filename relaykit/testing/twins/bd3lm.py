"""Twin of BD3-LM's HF model (kuleshov-group/bd3lms ``models/hf/modeling_bd3lm.py``, ``configuration_bd3lm.py``).

Kept from upstream (read from the public code, written here):
- ``BD3LM(PreTrainedModel)`` with ``.backbone`` (``DITBackbone``: ``vocab_embed``, ``sigma_map``, ``rotary_emb``,
  ``blocks``, ``output_layer``, the MDLM module names) and ``forward(input_ids, timesteps, sample_mode, store_kv,
  output_hidden_states, return_dict)``; config ``block_size``, ``model_length``, ``cross_attn``, ``attn_backend``,
  ``hidden_dim``, ``n_blocks``, ``n_heads``, ``cond_dim``, ``time_conditioning``.
- Training layout (``cross_attn`` and not ``sample_mode``): input ``[x_t ; x_0]`` (2n) under the block-diffusion
  mask, RoPE positions 0..n-1 on each half, logits of the noisy half only (the final hidden has 2n rows).
- Sampling without a cache: the whole sequence under the block-causal (x_0 / x_0) part of that mask.
- KV cache per block layer (``kv_cache`` holds packed qkv BEFORE RoPE, ``cache_idx`` the committed length): every
  sample-mode call feeds one block, writes its qkv at ``cache_idx`` (the active block is recomputed each step) and
  attends to everything cached before it; ``store_kv=True`` (the clean commit pass) advances ``cache_idx``, and a
  full window is left-shifted by one block.

Differences: SDPA only (upstream's flex path needs CUDA); ``reset_kv_cache`` allocates on the model's device and
dtype (upstream: CUDA, bf16); no bf16 autocast; LayerNorm keeps float64 in float64.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from relaykit.testing.twins.mdlm import (
    DDitFinalLayer,
    EmbeddingLayer,
    LayerNorm,
    Rotary,
    TimestepEmbedder,
    apply_rotary_pos_emb,
    modulate,
)
from relaykit.testing.twins.shared import block_diff_mask, masked_lm_output, seeded


class BD3LMConfig(PretrainedConfig):
    model_type = "bd3lm"

    def __init__(
        self,
        block_size: int = 1,
        vocab_size: int = 50258,
        model_length: int = 1024,
        cross_attn: bool = True,
        adaln: bool = True,
        attn_backend: str = "sdpa",
        causal: bool = False,
        hidden_dim: int = 768,
        cond_dim: int = 129,
        n_blocks: int = 12,
        n_heads: int = 12,
        dropout: float = 0.1,
        time_conditioning: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.model_length = model_length
        self.cross_attn = cross_attn
        self.adaln = adaln
        self.attn_backend = attn_backend
        self.causal = causal
        self.hidden_dim = hidden_dim
        self.cond_dim = cond_dim
        self.n_blocks = n_blocks
        self.n_heads = n_heads
        self.dropout = dropout
        self.time_conditioning = time_conditioning


class DDiTBlock(nn.Module):
    def __init__(self, n: int, block_size: int, dim: int, n_heads: int, cond_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.n = n
        self.block_size = block_size
        self.n_heads = n_heads
        self.kv_cache: Tensor | None = None
        self.cache_idx = 0
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.dropout = dropout
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim, bias=True)
        self.adaLN_modulation.weight.data.zero_()
        self.adaLN_modulation.bias.data.zero_()

    def get_qkv(self, x: Tensor, rotary_cos_sin: tuple[Tensor, Tensor], store_kv: bool = False) -> Tensor:
        if self.kv_cache is not None:  # write the active block's qkv, read everything up to it
            self.kv_cache[:, self.cache_idx : self.cache_idx + self.block_size] = self.attn_qkv(x)
            qkv = self.kv_cache[:, : self.cache_idx + self.block_size].clone()
        else:
            qkv = self.attn_qkv(x)
        if store_kv:  # commit: keep the block, slide the window when full
            self.cache_idx += self.block_size
            if self.cache_idx >= self.n:
                self.cache_idx = self.n - self.block_size
                self.kv_cache[:, : -self.block_size] = self.kv_cache[:, self.block_size :].clone()
        b, s, _ = qkv.shape
        qkv = qkv.view(b, s, 3, self.n_heads, -1)  # (b, s, 3, h, hd)
        return apply_rotary_pos_emb(qkv, *rotary_cos_sin)

    def forward(
        self,
        x: Tensor,
        rotary_cos_sin: tuple[Tensor, Tensor],
        c: Tensor,
        mask: Tensor | None = None,
        sample_mode: bool = False,
        store_kv: bool = False,
    ) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(6, 2)
        x_skip = x
        x = modulate(self.norm1(x), shift_msa, scale_msa)
        if mask is not None and not sample_mode:  # [x_t ; x_0]: RoPE 0..n-1 on each half
            n = mask.shape[-1] // 2
            qkv = torch.cat((self.get_qkv(x[:, :n], rotary_cos_sin), self.get_qkv(x[:, n:], rotary_cos_sin)), dim=1)
        else:
            qkv = self.get_qkv(x, rotary_cos_sin, store_kv=store_kv)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (b, h, s, hd)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # bool mask: True = attend
        att = att.transpose(1, 2).flatten(2)  # (b, s, d)
        if self.kv_cache is not None:
            att = att[:, -self.block_size :]
        x = x_skip + gate_msa * F.dropout(self.attn_out(att), self.dropout, self.training)
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + gate_mlp * F.dropout(h, self.dropout, self.training)


class DITBackbone(nn.Module):
    def __init__(self, config: BD3LMConfig) -> None:
        super().__init__()
        self.config = config
        self.cross_attn = config.cross_attn
        self.block_size = config.block_size
        self.n = config.model_length
        self.vocab_embed = EmbeddingLayer(config.hidden_dim, config.vocab_size)
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = Rotary(config.hidden_dim // config.n_heads)
        self.blocks = nn.ModuleList(
            DDiTBlock(self.n, self.block_size, config.hidden_dim, config.n_heads, config.cond_dim, config.dropout)
            for _ in range(config.n_blocks)
        )
        self.output_layer = DDitFinalLayer(config.hidden_dim, config.vocab_size, config.cond_dim)
        if self.cross_attn:
            idx = torch.arange(2 * self.n)
            self.mask = block_diff_mask(idx[:, None], idx[None, :], self.block_size, self.n)

    def forward(
        self,
        indices: Tensor,
        sigma: Tensor,
        sample_mode: bool = False,
        store_kv: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        if not self.config.time_conditioning:
            sigma = torch.zeros_like(sigma)
        all_hidden_states = []
        x = self.vocab_embed(indices)  # (b, s, d)
        if output_hidden_states:
            all_hidden_states.append(x)
        c = F.silu(self.sigma_map(sigma))
        mask = None
        if self.cross_attn:
            mask = self.mask.to(x.device)
            n = self.mask.shape[-1] // 2
            if not sample_mode:
                rotary_cos_sin = self.rotary_emb(x[:, : self.n])
            elif self.blocks[0].kv_cache is not None:
                mask = None
                accum = self.blocks[0].cache_idx + self.block_size
                rotary_cos_sin = self.rotary_emb(x.new_zeros(x.shape[0], accum, x.shape[2]))
            else:
                rotary_cos_sin = self.rotary_emb(x[:, :n])
                mask = mask[n : n + x.shape[1], n : n + x.shape[1]]  # block-causal on the clean side
        else:
            rotary_cos_sin = self.rotary_emb(x)
        for block in self.blocks:
            x = block(x, rotary_cos_sin, c, mask=mask, sample_mode=sample_mode, store_kv=store_kv)
            if output_hidden_states:
                all_hidden_states.append(x)
        logits = self.output_layer(x, c)
        if self.cross_attn and not sample_mode:
            n = self.mask.shape[-1] // 2
            logits = logits[:, :n]
            all_hidden_states = [h[:, :n] for h in all_hidden_states]
        return logits, all_hidden_states


class BD3LM(PreTrainedModel):
    config_class = BD3LMConfig
    base_model_prefix = "bd3lm"

    def __init__(self, config: BD3LMConfig) -> None:
        super().__init__(config)
        self.backbone = DITBackbone(config)

    def _init_weights(self, module: nn.Module) -> None:  # upstream initialisation happens in the modules
        pass

    def reset_kv_cache(self, eval_batch_size: int = 1) -> None:
        ref = self.backbone.vocab_embed.embedding
        for block in self.backbone.blocks:
            shape = (eval_batch_size, self.config.model_length, 3 * self.config.hidden_dim)
            block.kv_cache = torch.zeros(shape, device=ref.device, dtype=ref.dtype)
            block.cache_idx = 0

    def forward(
        self,
        input_ids: Tensor | None = None,
        timesteps: Tensor | None = None,
        sample_mode: bool | None = None,
        store_kv: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MaskedLMOutput | Tensor | tuple:
        logits, all_hidden_states = self.backbone(
            indices=input_ids,
            sigma=timesteps,
            sample_mode=bool(sample_mode),
            store_kv=bool(store_kv),
            output_hidden_states=bool(output_hidden_states),
        )
        return masked_lm_output(logits, all_hidden_states, output_hidden_states, return_dict)


def tiny_bd3lm(
    *,
    vocab: int = 48,
    width: int = 32,
    layers: int = 2,
    heads: int = 4,
    block_size: int = 4,
    model_length: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> BD3LM:
    """A random tiny BD3-LM (mask index = vocab - 1), zero-initialised branches perturbed, in eval mode."""
    config = BD3LMConfig(
        block_size=block_size,
        vocab_size=vocab,
        model_length=model_length,
        hidden_dim=width,
        cond_dim=16,
        n_blocks=layers,
        n_heads=heads,
        dropout=0.0,
    )
    return seeded(lambda: BD3LM(config), seed=seed, dtype=dtype, perturb=True)
