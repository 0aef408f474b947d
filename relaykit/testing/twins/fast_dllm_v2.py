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

Parts: the config and decoder layers in :mod:`~relaykit.testing.twins.fast_dllm_v2_layers`, ``generate()`` in
:mod:`~relaykit.testing.twins.fast_dllm_v2_generate`, the blocks other twins share in
:mod:`~relaykit.testing.twins.shared`.

Differences: SDPA with a boolean mask replaces flex attention in training (so it runs on CPU); RMSNorm keeps
float64 inputs in float64 (upstream computes in float32); the cache is read through transformers 5's
``cache.layers[i]`` as well as 4.x's ``cache[i]``; top-p sampling draws for every row (upstream: row 0 only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from relaykit.testing.twins.fast_dllm_v2_generate import FAST_DLLM_MASK_ID, Fast_dLLMGenerationMixin
from relaykit.testing.twins.fast_dllm_v2_layers import (
    Fast_dLLM_QwenConfig,
    Fast_dLLM_QwenDecoderLayer,
    Fast_dLLM_QwenRMSNorm,
    Fast_dLLM_QwenRotaryEmbedding,
)
from relaykit.testing.twins.shared import block_causal_mask, block_diff_mask, seeded

__all__ = ["Fast_dLLM_QwenConfig", "Fast_dLLM_QwenForCausalLM", "Fast_dLLM_QwenModel", "tiny_fast_dllm_v2"]


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
        return block_causal_mask(q_idx[:, None], kv_idx[None, :], block_size)

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


class Fast_dLLM_QwenForCausalLM(Fast_dLLMGenerationMixin, Fast_dLLM_QwenPreTrainedModel):
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
    config = Fast_dLLM_QwenConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, bd_size=bd_size
    )
    return seeded(lambda: Fast_dLLM_QwenForCausalLM(config), seed=seed, dtype=dtype)
