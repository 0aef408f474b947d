"""The Fast-dLLM v2 twin's config and decoder layers (the model itself: :mod:`relaykit.testing.twins.fast_dllm_v2`).

Legend: b batch, h heads, q positions fed, hd head width, d model width.

``Fast_dLLM_QwenDecoderLayer`` is Qwen2's (RMSNorm, grouped-query attention with biased q/k/v, gated MLP) with
Fast-dLLM v2's caches in the attention: ``past_key_value`` (committed blocks, keys after RoPE, appended only by a
commit pass) and ``block_past_key_values`` (the current block, whose sub-blocks overwrite their slots in place at
``replace_position``). In train mode the input is ``[x_t ; x_0]`` and each half takes RoPE positions 0..L-1.

Example::

    config = Fast_dLLM_QwenConfig(vocab_size=64, hidden_size=32, bd_size=4)
    layer = Fast_dLLM_QwenDecoderLayer(config, layer_idx=0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig
from transformers.cache_utils import DynamicCache

from relaykit.testing.twins.shared import QwenAttentionProjections, QwenMLP, apply_rotary_pos_emb


class Fast_dLLM_QwenConfig(PretrainedConfig):
    model_type = "Fast_dLLM_Qwen"

    def __init__(
        self,
        vocab_size: int = 64,
        hidden_size: int = 32,
        intermediate_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 2,
        max_position_embeddings: int = 512,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        bd_size: int = 32,
        tie_word_embeddings: bool = True,
        **kwargs: object,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.bd_size = bd_size
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


def _layer_kv(cache: DynamicCache, idx: int) -> tuple[Tensor, Tensor]:
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers 5
        return layers[idx].keys, layers[idx].values
    return cache[idx]  # transformers 4.x


class Fast_dLLM_QwenRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: Tensor) -> Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.to(torch.promote_types(dtype, torch.float32))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class Fast_dLLM_QwenRotaryEmbedding(nn.Module):
    def __init__(self, config: Fast_dLLM_QwenConfig) -> None:
        super().__init__()
        dim = config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        freqs = position_ids[:, :, None].double() * self.inv_freq[None, None, :]  # (1, q, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class Fast_dLLM_QwenAttention(QwenAttentionProjections):
    def __init__(self, config: Fast_dLLM_QwenConfig, layer_idx: int) -> None:
        super().__init__(config)
        self.layer_idx = layer_idx

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor],
        attention_mask: Tensor | None,
        past_key_value: DynamicCache | None = None,
        update_past_key_values: bool = False,
        block_past_key_values: DynamicCache | None = None,
        replace_position: int | None = None,
    ) -> Tensor:
        q_len = hidden_states.shape[1]
        q, k, v = self.project(hidden_states)  # (b, h, q, hd), (b, kv, q, hd) x 2
        cos, sin = position_embeddings
        if self.training:  # [x_t ; x_0]: each half gets positions 0..L-1
            half = q_len // 2
            q1, k1 = apply_rotary_pos_emb(q[:, :, :half], k[:, :, :half], cos, sin)
            q2, k2 = apply_rotary_pos_emb(q[:, :, half:], k[:, :, half:], cos, sin)
            q, k = torch.cat((q1, q2), dim=-2), torch.cat((k1, k2), dim=-2)
        else:
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if block_past_key_values is not None:
            if len(block_past_key_values) <= self.layer_idx:
                k, v = block_past_key_values.update(k, v, self.layer_idx)
            else:  # sub-block: overwrite its slots of the block cache in place
                block_k, block_v = _layer_kv(block_past_key_values, self.layer_idx)
                block_k[:, :, replace_position : replace_position + q_len] = k
                block_v[:, :, replace_position : replace_position + q_len] = v
                k, v = block_k, block_v
        if past_key_value is not None:
            if update_past_key_values:  # commit pass: append the finished block
                k, v = past_key_value.update(k, v, self.layer_idx)
            elif len(past_key_value) > self.layer_idx:
                past_k, past_v = _layer_kv(past_key_value, self.layer_idx)
                k, v = torch.cat((past_k, k), dim=-2), torch.cat((past_v, v), dim=-2)
        k, v = self.repeat_kv(k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=False)
        return self.output(out)


class Fast_dLLM_QwenDecoderLayer(nn.Module):
    def __init__(self, config: Fast_dLLM_QwenConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Fast_dLLM_QwenAttention(config, layer_idx)
        self.mlp = QwenMLP(config)
        self.input_layernorm = Fast_dLLM_QwenRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = Fast_dLLM_QwenRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states: Tensor, **attn_kwargs: object) -> Tensor:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), **attn_kwargs)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
