"""Twin of LLaDA (GSAI-ML/LLaDA-8B-*, remote code ``modeling_llada.py``) and of Fast-dLLM v1's cached copy.

Kept from upstream (read from the public code, written here):
- ``LLaDAModelLM`` (a ``PreTrainedModel``, ``base_model_prefix = "model"``) whose ``.model`` is ``LLaDAModel``
  (a plain nn.Module) with ``.transformer`` an ``nn.ModuleDict``: ``wte``, ``emb_drop``, ``ln_f``, ``blocks[i]``
  (``LLaDALlamaBlock``: attn_norm, q/k/v_proj, attn_out, ff_norm, ff_proj, up_proj, ff_out, rotary_emb) and
  ``ff_out`` (the LM head) only when ``weight_tying`` is false: the ``ff_out`` name clash is real here.
- Config fields ``d_model`` (``hidden_size`` is an alias property), ``weight_tying``, ``mask_token_id``.
- ``LLaDAModelLM.forward`` calls ``self.model.forward(...)`` directly (hooks on ``.model`` never fire).
- Fully bidirectional attention; RoPE positions are indices in the cached + current sequence.
- The hub file refuses a cache. With ``fast_dllm_v1=True`` (the Fast-dLLM v1 copy of the file, same class name
  upstream) ``past_key_values`` is a list of ``(k, v)`` per layer, shape (b, heads, L, d), keys stored BEFORE
  RoPE, and ``replace_position`` (b, L) bool overwrites the fed block's K/V in the cache tensors IN PLACE (dual
  cache); queries then take RoPE positions ``end - q .. end - 1`` with ``end`` = last replaced index + 1.

Differences: no ALiBi / block groups / flash paths; ``attention_mask`` with padding is refused (upstream
v1 ignores it inside attention); a ``replace_position`` must select the same columns in every row (upstream
flattens the indices over the batch, which only works for one row).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from relaykit.testing.twins.shared import rope, seeded

MASK_ID = 126336  # the published LLaDA-8B mask token (the twin's default vocabulary is small, see tiny_llada)


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(
        self,
        d_model: int = 32,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        n_layers: int = 2,
        mlp_hidden_size: int = 64,
        vocab_size: int = 64,
        embedding_size: int | None = None,
        weight_tying: bool = False,
        mask_token_id: int = 63,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-5,
        max_sequence_length: int = 256,
        fast_dllm_v1: bool = False,
        use_cache: bool = False,
        **kwargs: object,
    ) -> None:
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.weight_tying = weight_tying
        self.mask_token_id = mask_token_id
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.max_sequence_length = max_sequence_length
        self.fast_dllm_v1 = fast_dllm_v1
        self.use_cache = use_cache
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def effective_n_kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


class RMSLayerNorm(nn.Module):
    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.eps = config.rms_norm_eps
        self.weight = nn.Parameter(torch.ones(config.d_model))

    def forward(self, x: Tensor) -> Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x


class RotaryEmbedding(nn.Module):
    """RoPE over absolute indices; keys always cover 0..key_len-1 (they are cached before RoPE)."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        dim = config.d_model // config.n_heads
        self.register_buffer("inv_freq", 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2).double() / dim)))

    def _sin_cos(self, positions: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        freqs = positions.double()[:, None] * self.inv_freq[None, :]  # (n, d/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (n, d)
        return angles.sin().to(like.dtype), angles.cos().to(like.dtype)

    def forward(self, q: Tensor, k: Tensor, block_end_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        query_len, key_len = q.shape[-2], k.shape[-2]
        end = key_len if block_end_index is None else int(block_end_index)
        sin_q, cos_q = self._sin_cos(torch.arange(end - query_len, end, device=q.device), q)
        sin_k, cos_k = self._sin_cos(torch.arange(key_len, device=k.device), k)
        return rope(q, cos_q, sin_q), rope(k, cos_k, sin_k)


class LLaDALlamaBlock(nn.Module):
    def __init__(self, layer_id: int, config: LLaDAConfig) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.config = config
        d, hidden = config.d_model, config.mlp_hidden_size
        kv_dim = config.effective_n_kv_heads * (d // config.n_heads)
        self.dropout = nn.Dropout(0.0)
        self.act = nn.SiLU()
        self.attn_norm = RMSLayerNorm(config)
        self.ff_norm = RMSLayerNorm(config)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_dim, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.ff_out = nn.Linear(hidden, d, bias=False)  # the MLP down-projection: NOT the LM head
        self.rotary_emb = RotaryEmbedding(config)

    def attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        layer_past: tuple[Tensor, Tensor] | None = None,
        use_cache: bool = False,
        replace_position: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        b, t, c = q.shape
        nh, nkv = self.config.n_heads, self.config.effective_n_kv_heads
        q = q.view(b, t, nh, c // nh).transpose(1, 2)  # (b, h, q, hd)
        k = k.view(b, t, nkv, c // nh).transpose(1, 2)
        v = v.view(b, t, nkv, c // nh).transpose(1, 2)
        replace_indices = None
        if layer_past is not None:
            past_key, past_value = layer_past
            if replace_position is None:
                k = torch.cat((past_key, k), dim=-2)  # prefix cache: keys before RoPE
                v = torch.cat((past_value, v), dim=-2)
            else:
                replace_indices = replace_position[0].nonzero(as_tuple=True)[0]
                if not bool((replace_position == replace_position[0]).all()):
                    raise NotImplementedError("twin: replace_position must select the same columns in every row")
                past_key[:, :, replace_indices] = k  # dual cache: overwrite the block in place
                past_value[:, :, replace_indices] = v
                k, v = past_key, past_value
        present = (k, v) if use_cache else None
        end = None if replace_indices is None else replace_indices.max() + 1
        q, k = self.rotary_emb(q, k, end)
        if nkv != nh:
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False)  # bidirectional
        att = att.transpose(1, 2).contiguous().view(b, t, c)
        return self.attn_out(att), present

    def forward(
        self,
        x: Tensor,
        attention_bias: Tensor | None = None,
        layer_past: tuple[Tensor, Tensor] | None = None,
        use_cache: bool = False,
        replace_position: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        x_normed = self.attn_norm(x)
        q, k, v = self.q_proj(x_normed), self.k_proj(x_normed), self.v_proj(x_normed)
        att, cache = self.attention(q, k, v, layer_past, use_cache, replace_position)
        x = x + self.dropout(att)
        og_x = x
        x = self.ff_norm(x)
        x = self.act(self.ff_proj(x)) * self.up_proj(x)
        x = og_x + self.dropout(self.ff_out(x))
        return x, cache


class LLaDAOutput(NamedTuple):
    logits: Tensor
    attn_key_values: list[tuple[Tensor, Tensor]] | None
    hidden_states: tuple[Tensor, ...] | None


class LLaDAModel(nn.Module):
    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.config = config
        vocab = config.embedding_size or config.vocab_size
        self.transformer = nn.ModuleDict(
            dict(wte=nn.Embedding(vocab, config.d_model), emb_drop=nn.Dropout(0.0), ln_f=RMSLayerNorm(config))
        )
        self.transformer.update({"blocks": nn.ModuleList(LLaDALlamaBlock(i, config) for i in range(config.n_layers))})
        if not config.weight_tying:
            self.transformer.update({"ff_out": nn.Linear(config.d_model, vocab, bias=False)})
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=1.0 if name.endswith("wte.weight") else 1.0 / math.sqrt(p.shape[1]))

    def forward(
        self,
        input_ids: Tensor,
        input_embeddings: Tensor | None = None,
        attention_mask: Tensor | None = None,
        attention_bias: Tensor | None = None,
        past_key_values: list[tuple[Tensor, Tensor]] | None = None,
        use_cache: bool = False,
        last_logits_only: bool = False,
        output_hidden_states: bool | None = None,
        replace_position: Tensor | None = None,
    ) -> LLaDAOutput:
        if not self.config.fast_dllm_v1:
            assert past_key_values is None and not use_cache, "The kvcache is not suppotred for MDM."
        if attention_mask is not None and bool((attention_mask == 0).any()):
            raise NotImplementedError("twin: padding masks are not modelled")
        if past_key_values:
            assert len(past_key_values) == self.config.n_layers
        x = self.transformer.wte(input_ids) if input_embeddings is None else input_embeddings  # (b, q, d)
        x = self.transformer.emb_drop(x)
        attn_key_values: list[tuple[Tensor, Tensor]] | None = [] if use_cache else None
        all_hidden_states = []
        for block_idx, block in enumerate(self.transformer.blocks):
            if output_hidden_states:
                all_hidden_states.append(x)
            layer_past = None if past_key_values is None else past_key_values[block_idx]
            x, cache = block(x, attention_bias, layer_past, use_cache, replace_position)
            if attn_key_values is not None:
                attn_key_values.append(cache)
        if last_logits_only:
            x = x[:, -1, :].unsqueeze(1)
        x = self.transformer.ln_f(x)
        if output_hidden_states:
            all_hidden_states.append(x)  # post ln_f, the LM head's input
        if self.config.weight_tying:
            logits = F.linear(x, self.transformer.wte.weight, None)
        else:
            logits = self.transformer.ff_out(x)
        hidden = tuple(all_hidden_states) if output_hidden_states else None
        return LLaDAOutput(logits=logits, attn_key_values=attn_key_values, hidden_states=hidden)


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config: LLaDAConfig, model: LLaDAModel | None = None) -> None:
        super().__init__(config)
        self.model = model or LLaDAModel(config)

    def _init_weights(self, module: nn.Module) -> None:  # weights are set by LLaDAModel
        pass

    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        attention_bias: Tensor | None = None,
        past_key_values: list[tuple[Tensor, Tensor]] | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        replace_position: Tensor | None = None,
    ) -> CausalLMOutputWithPast | tuple:
        if use_cache is None:
            use_cache = self.config.use_cache
        if output_attentions:
            raise ValueError("output_attentions is not yet supported in LLaDA")
        outputs = self.model.forward(  # upstream calls forward directly: hooks on self.model do not fire
            input_ids=input_ids,
            input_embeddings=inputs_embeds,
            attention_mask=attention_mask,
            attention_bias=attention_bias,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            replace_position=replace_position,
        )
        if return_dict is False:
            return (outputs.logits,) + tuple(outputs[1:])
        return CausalLMOutputWithPast(
            logits=outputs.logits, past_key_values=outputs.attn_key_values, hidden_states=outputs.hidden_states
        )

    def get_input_embeddings(self) -> nn.Module:
        return self.model.transformer.wte

    def get_output_embeddings(self) -> nn.Module:
        if self.config.weight_tying:
            return self.model.transformer.wte
        return self.model.transformer.ff_out


def tiny_llada(
    *,
    vocab: int = 64,
    width: int = 32,
    layers: int = 2,
    heads: int = 4,
    weight_tying: bool = False,
    fast_dllm_v1: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> LLaDAModelLM:
    """A random tiny LLaDA (mask id = vocab - 1), in eval mode."""
    config = LLaDAConfig(
        d_model=width,
        n_heads=heads,
        n_layers=layers,
        mlp_hidden_size=2 * width,
        vocab_size=vocab,
        weight_tying=weight_tying,
        mask_token_id=vocab - 1,
        fast_dllm_v1=fast_dllm_v1,
    )
    return seeded(lambda: LLaDAModelLM(config), seed=seed, dtype=dtype)
