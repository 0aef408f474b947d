"""Twin of Fast-dLLM v2 (Efficient-Large-Model/Fast_dLLM_v2_*, remote code ``modeling.py``; NVlabs/Fast-dLLM v2).

Kept from upstream (read from the public code, written here):
- ``Fast_dLLM_QwenForCausalLM``: ``.model`` (``Fast_dLLM_QwenModel``: ``embed_tokens``, ``layers[i]``, ``norm``,
  ``rotary_emb``) and ``.lm_head`` tied to ``embed_tokens`` (``tie_word_embeddings``); config ``bd_size``.
- Forward keyword arguments ``update_past_key_values``, ``block_size``, ``use_block_cache``,
  ``block_past_key_values``, ``replace_position`` (int), ``mask_id``; the user ``attention_mask`` is replaced by the
  model's own block-causal mask; ``inputs_embeds`` crashes at inference (the mask builder reads ``input_ids``).
- Caches: HF ``DynamicCache`` holding keys AFTER RoPE. ``past_key_values`` holds committed blocks and is only
  appended by a commit pass (``update_past_key_values=True``); with ``use_block_cache`` the first call caches the
  current block in ``block_past_key_values`` and later calls feed a sub-block whose K/V overwrite their slots in
  place at ``replace_position``; positions are ``cache_len (+ replace_position) + arange(q)``.
- Training (``self.training``): blocks of ``bd_size`` are noised with one t per block (answer tokens only), the
  input becomes ``[x_t ; x_0]`` (2L) under the block-diffusion mask, a complementary-mask copy doubles the batch,
  the LM head reads the noisy half, loss = shifted causal-LM CE.
- ``generate()`` calls ``self.forward(...)`` directly (hooks on the top module never fire), shifts logits right by
  one (token shift), commits masked positions with p > threshold plus the argmax, then runs the commit pass.
  The known quirk is kept: a prompt of exactly ``block_size`` tokens is not cached (``P > block_size`` test).

Differences: SDPA with a boolean mask replaces flex attention in training (so it runs on CPU); RMSNorm keeps
float64 inputs in float64 (upstream computes in float32); the cache is read through transformers 5's
``cache.layers[i]`` as well as 4.x's ``cache[i]``; top-p sampling draws for every row (upstream: row 0 only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

FAST_DLLM_MASK_ID = 151665
FAST_DLLM_STOP_TOKEN = 151645


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


def block_diff_mask(q_idx: Tensor, kv_idx: Tensor, block_size: int, n: int) -> Tensor:
    """Training mask over [x_t ; x_0] (2n): block-diagonal on x_t, x_t -> earlier clean blocks, clean block-causal."""
    x0_q, x0_kv = q_idx >= n, kv_idx >= n
    block_q = torch.where(x0_q, q_idx - n, q_idx) // block_size
    block_kv = torch.where(x0_kv, kv_idx - n, kv_idx) // block_size
    diagonal = (block_q == block_kv) & (x0_q == x0_kv)
    offset_causal = (block_q > block_kv) & x0_kv & ~x0_q
    clean_causal = (block_q >= block_kv) & x0_kv & x0_q
    return diagonal | offset_causal | clean_causal


def eval_block_diff_mask(q_idx: Tensor, kv_idx: Tensor, block_size: int) -> Tensor:
    return (q_idx // block_size) >= (kv_idx // block_size)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


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


class Fast_dLLM_QwenMLP(nn.Module):
    def __init__(self, config: Fast_dLLM_QwenConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Fast_dLLM_QwenAttention(nn.Module):
    def __init__(self, config: Fast_dLLM_QwenConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

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
        b, q_len, _ = hidden_states.shape
        shape = (b, q_len, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)  # (b, h, q, hd)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
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
        rep = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(b, q_len, -1))


class Fast_dLLM_QwenDecoderLayer(nn.Module):
    def __init__(self, config: Fast_dLLM_QwenConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Fast_dLLM_QwenAttention(config, layer_idx)
        self.mlp = Fast_dLLM_QwenMLP(config)
        self.input_layernorm = Fast_dLLM_QwenRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = Fast_dLLM_QwenRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states: Tensor, **attn_kwargs: object) -> Tensor:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), **attn_kwargs)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Fast_dLLM_QwenPreTrainedModel(PreTrainedModel):
    config_class = Fast_dLLM_QwenConfig
    base_model_prefix = "model"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.2)
            if getattr(module, "bias", None) is not None:
                module.bias.data.normal_(0.0, 0.02)


@dataclass
class BaseModelOutputWithPastAndBlockCache(BaseModelOutputWithPast):
    block_past_key_values: DynamicCache | None = None


@dataclass
class CausalLMOutputWithPastAndBlockCache(CausalLMOutputWithPast):
    block_past_key_values: DynamicCache | None = None


class Fast_dLLM_QwenModel(Fast_dLLM_QwenPreTrainedModel):
    def __init__(self, config: Fast_dLLM_QwenConfig) -> None:
        super().__init__(config)
        self.bd_size = config.bd_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Fast_dLLM_QwenDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Fast_dLLM_QwenRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = Fast_dLLM_QwenRotaryEmbedding(config)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def eval_mask(self, seqlen: int, block_size: int, cache_seq_len: int) -> Tensor:
        q_idx = torch.arange(seqlen) + cache_seq_len
        kv_idx = torch.arange(seqlen + cache_seq_len)
        return eval_block_diff_mask(q_idx[:, None], kv_idx[None, :], block_size)

    def gen_mask(self, seqlen: int, block_size: int) -> Tensor:
        idx = torch.arange(2 * seqlen)
        return block_diff_mask(idx[:, None], idx[None, :], block_size, seqlen)

    def forward(
        self,
        input_ids: Tensor | None = None,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        cache_position: Tensor | None = None,
        update_past_key_values: bool = False,
        block_size: int = 32,
        use_block_cache: bool = False,
        block_past_key_values: DynamicCache | None = None,
        replace_position: int | None = None,
        **kwargs: object,
    ) -> BaseModelOutputWithPastAndBlockCache:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # (b, q, d)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if use_block_cache and block_past_key_values is None:
            block_past_key_values = DynamicCache()
        if cache_position is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            if self.training:
                start, length = past_seen, inputs_embeds.shape[1] // 2
            elif use_block_cache:
                start = past_seen + replace_position if replace_position is not None else past_seen
                length = inputs_embeds.shape[1]
            else:
                start, length = past_seen, inputs_embeds.shape[1]
            cache_position = torch.arange(start, start + length, device=inputs_embeds.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)
        if self.training:
            attention_mask = self.gen_mask(labels.shape[1], self.bd_size).to(inputs_embeds.device)
        elif use_block_cache and block_past_key_values.get_seq_length() != 0:
            attention_mask = None
        else:
            past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
            attention_mask = self.eval_mask(input_ids.shape[1], block_size, past_len).to(inputs_embeds.device)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                past_key_value=past_key_values,
                update_past_key_values=update_past_key_values,
                block_past_key_values=block_past_key_values,
                replace_position=replace_position,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPastAndBlockCache(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            block_past_key_values=block_past_key_values if use_block_cache else None,
        )


class Fast_dLLM_QwenForCausalLM(Fast_dLLM_QwenPreTrainedModel):
    def __init__(self, config: Fast_dLLM_QwenConfig) -> None:
        super().__init__(config)
        self.model = Fast_dLLM_QwenModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_decoder(self) -> nn.Module:
        return self.model

    def _noise(self, input_ids: Tensor, labels: Tensor, mask_id: int) -> tuple[Tensor, Tensor]:
        """Upstream's training input: [x_t ; x_0] per row plus a complementary-mask copy (2b, 2L), labels (2b, L)."""
        bd = self.model.bd_size
        blocks = input_ids.reshape(-1, bd)  # one t per block
        t = torch.rand(blocks.shape[0], device=input_ids.device)
        p_mask = ((1 - 1e-3) * t + 1e-3)[:, None].expand_as(blocks)
        masked = torch.rand(blocks.shape, device=input_ids.device) < p_mask
        rows, row_labels = [], []
        for where in (masked, ~masked):
            x_t = torch.where(where, mask_id, blocks).reshape(labels.shape)
            noisy = torch.where(labels != -100, x_t, input_ids)  # only answer tokens are noised
            row_labels.append(torch.where(noisy == mask_id, labels, torch.full_like(labels, -100)))
            rows.append(torch.cat([noisy, input_ids], dim=1))
        return torch.cat(rows, dim=0), torch.cat(row_labels, dim=0)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        cache_position: Tensor | None = None,
        logits_to_keep: int = 0,
        update_past_key_values: bool = False,
        block_size: int = 32,
        use_block_cache: bool = False,
        block_past_key_values: DynamicCache | None = None,
        replace_position: int | None = None,
        mask_id: int = FAST_DLLM_MASK_ID,
        **kwargs: object,
    ) -> CausalLMOutputWithPastAndBlockCache:
        if self.training:
            input_ids, labels = self._noise(input_ids, labels, mask_id)
        outputs = self.model(
            input_ids=input_ids,
            labels=labels,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cache_position=cache_position,
            update_past_key_values=update_past_key_values,
            block_size=block_size,
            use_block_cache=use_block_cache,
            block_past_key_values=block_past_key_values,
            replace_position=replace_position,
        )
        hidden_states = outputs.last_hidden_state
        if self.training:
            hidden_states = hidden_states[:, : hidden_states.shape[1] // 2]  # the noisy half
        logits = self.lm_head(hidden_states[:, -logits_to_keep:])  # (b, q, V)
        loss = None
        if labels is not None:  # shifted causal-LM CE: position i-1 predicts token i
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPastAndBlockCache(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            block_past_key_values=outputs.block_past_key_values,
        )

    @torch.no_grad()
    def sample_with_top_p(self, logits: Tensor, top_p: float = 0.95, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        if temperature <= 0:
            p_1t = torch.softmax(logits, dim=-1)
            return p_1t.argmax(dim=-1), p_1t
        probs = torch.softmax(logits / temperature, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        probs = probs.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), 0.0)
        p_1t = probs / probs.sum(-1, keepdim=True)
        x_1 = torch.multinomial(p_1t.flatten(0, -2), 1).view(p_1t.shape[:-1])
        return x_1, p_1t

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        mask_id: int = FAST_DLLM_MASK_ID,
        threshold: float = 1,
        small_block_size: int = 8,
        block_size: int = 32,
        stop_token: int = FAST_DLLM_STOP_TOKEN,
        stopping_criteria: object = None,
        top_p: float = 0.95,
        temperature: float = 0,
        use_block_cache: bool = False,
        **kwargs: object,
    ) -> Tensor:
        """Upstream's vanilla block-diffusion decoding loop (calls ``self.forward`` directly, as upstream does)."""
        num_blocks = max_new_tokens // block_size
        original_input_length = input_ids.shape[1]
        past_key_values = None
        if input_ids.shape[1] > block_size:  # prefill the complete prompt blocks
            output = self.forward(
                input_ids=input_ids[:, : input_ids.shape[1] // block_size * block_size],
                use_cache=True,
                update_past_key_values=True,
                block_size=block_size,
            )
            past_key_values = output.past_key_values
            if input_ids.shape[1] % block_size == 0:
                input_ids = torch.cat([input_ids, output.logits[:, -1:].argmax(dim=-1)], dim=1)
        num_small_blocks = block_size // small_block_size
        for _ in range(num_blocks):
            if stop_token in input_ids[:, original_input_length:]:
                break
            prompt_length = input_ids.shape[1]
            x_init = torch.full(
                (input_ids.shape[0], block_size - prompt_length % block_size), mask_id, device=input_ids.device
            )
            x_t = torch.cat([input_ids, x_init], dim=1)
            block_past_key_values = None
            while True:
                if self._stopped(x_t, prompt_length, stop_token, mask_id):
                    break
                mask_idx = x_t[:, -block_size:] == mask_id
                if mask_idx.sum() == 0:  # commit pass: cache the finished block, predict the next token
                    output = self.forward(
                        input_ids=x_t[:, -block_size:],
                        use_cache=True,
                        past_key_values=past_key_values,
                        update_past_key_values=True,
                        block_size=block_size,
                    )
                    past_key_values = output.past_key_values
                    x_t = torch.cat([x_t, output.logits[:, -1:].argmax(dim=-1)], dim=1)
                    break
                for small_block_idx in range(num_small_blocks):
                    sb_start = small_block_idx * small_block_size
                    sb_end = sb_start + small_block_size
                    start = -block_size + sb_start
                    end = None if block_size == sb_end else -block_size + sb_end
                    while True:
                        mask_idx = x_t[:, -block_size:] == mask_id
                        if mask_idx[:, start:end].sum() == 0:
                            break
                        if self._stopped(x_t, prompt_length, stop_token, mask_id):
                            break
                        if use_block_cache:
                            if block_past_key_values is None or (x_t[:, -block_size + sb_start] == mask_id).any():
                                output = self.forward(
                                    input_ids=x_t[:, -block_size:],
                                    use_cache=True,
                                    past_key_values=past_key_values,
                                    update_past_key_values=False,
                                    use_block_cache=True,
                                )
                                logits, block_past_key_values = output.logits, output.block_past_key_values
                                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)[:, start:end]
                            else:
                                logits = self.forward(
                                    input_ids=x_t[:, start:end],
                                    use_cache=True,
                                    past_key_values=past_key_values,
                                    update_past_key_values=False,
                                    use_block_cache=True,
                                    block_past_key_values=block_past_key_values,
                                    replace_position=sb_start,
                                ).logits
                                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
                        else:
                            logits = self.forward(
                                input_ids=x_t[:, -block_size:],
                                use_cache=True,
                                past_key_values=past_key_values,
                                update_past_key_values=False,
                            ).logits
                            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)[:, start:end]
                        x_1, p_1t = self.sample_with_top_p(logits, top_p=top_p, temperature=temperature)
                        x1_p = torch.gather(p_1t, -1, x_1.unsqueeze(-1)).squeeze(-1)
                        x1_p = torch.where(mask_idx[:, start:end], x1_p, -torch.inf)
                        unmask_idx = x1_p > threshold
                        unmask_idx[torch.arange(x_1.shape[0]), x1_p.argmax(dim=-1)] = True
                        unmask_idx = unmask_idx & mask_idx[:, start:end]
                        x_t[:, start:end][unmask_idx] = x_1[unmask_idx]
            input_ids = x_t
        if stop_token in input_ids[:, original_input_length:]:
            stop_idx = (input_ids[:, original_input_length:] == stop_token).nonzero()[0][1]
            input_ids = input_ids[:, : stop_idx + original_input_length + 1]
        return input_ids

    @staticmethod
    def _stopped(x_t: Tensor, prompt_length: int, stop_token: int, mask_id: int) -> bool:
        """Upstream's early stop: a stop token with no mask before it (first row's, as upstream)."""
        if stop_token not in x_t[:, prompt_length:]:
            return False
        stop_idx = (x_t[:, prompt_length:] == stop_token).nonzero()[0][1]
        return bool((x_t[:, prompt_length : prompt_length + stop_idx] == mask_id).sum() == 0)


def tiny_fast_dllm_v2(
    *,
    vocab: int = 64,
    width: int = 32,
    layers: int = 2,
    bd_size: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Fast_dLLM_QwenForCausalLM:
    """A random tiny Fast-dLLM v2 (tied LM head), in eval mode. Its mask id is ``vocab - 1`` by convention."""
    torch.manual_seed(seed)
    config = Fast_dLLM_QwenConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, bd_size=bd_size
    )
    return Fast_dLLM_QwenForCausalLM(config).to(dtype).eval()
