"""The decoding loop of the Fast-dLLM v2 twin: upstream's ``generate()`` and its top-p sampler.

Legend: b batch, V vocabulary.

Upstream defines these on ``Fast_dLLM_QwenForCausalLM``; the twin keeps them in this mixin, which that class
inherits (see :mod:`relaykit.testing.twins.fast_dllm_v2` for the model and the list of differences).
``generate()`` calls ``self.forward(...)`` directly (hooks on the top module never fire), decodes blocks of
``block_size`` in sub-blocks of ``small_block_size``, shifts logits right by one (token shift), commits masked
positions with p > threshold plus the argmax, then runs the commit pass that appends the finished block to the KV
cache.

Example::

    model = tiny_fast_dllm_v2(bd_size=4)
    out = model.generate(prompt, max_new_tokens=8, mask_id=63, block_size=4, small_block_size=2, threshold=0.9)
"""

from __future__ import annotations

import torch
from torch import Tensor

FAST_DLLM_MASK_ID = 151665
FAST_DLLM_STOP_TOKEN = 151645


class Fast_dLLMGenerationMixin:
    """``generate()``, ``sample_with_top_p()`` and the early-stop test, for a model whose ``forward`` takes
    Fast-dLLM v2's cache arguments."""

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
