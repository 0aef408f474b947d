"""Twin of Dream (Dream-org/Dream-v0-*-7B, remote code ``modeling_dream.py`` and ``generation_utils.py``;
DreamLM/Dream).

Kept from upstream (read from the public code, written here):
- ``DreamModel`` (a ``PreTrainedModel``; config ``model_type = "Dream"``) whose ``.model`` is ``DreamBaseModel``
  with ``embed_tokens``, ``layers[i]`` (Qwen2.5 decoder layers: ``self_attn`` q/k/v (biased) and o projections,
  ``mlp`` gate/up/down, ``input_layernorm``, ``post_attention_layernorm``), ``norm`` (RMS) and ``rotary_emb``;
  ``lm_head`` (untied in the published 7B). ``get_input_embeddings`` / ``get_output_embeddings``.
- ``forward(input_ids, attention_mask=None, position_ids=None, ...)`` returns ``MaskedLMOutput``; attention is
  bidirectional (never causal); ``attention_mask`` is None, the string ``"full"`` or a (b, 1, N, N) bool mask.
- Config: ``mask_token_id`` 151666 and ``pad_token_id`` / ``eos_token_id`` 151643 in the published checkpoints.
- TOKEN SHIFT: it starts from Qwen2.5, the hidden state at i predicts token i + 1; ``diffusion_generate`` shifts
  the logits right by one (position 0 keeps its own).
- ``diffusion_generate(input_ids, attention_mask=None, max_new_tokens=..., steps=..., temperature=0.0, top_p,
  top_k, alg="origin" | "maskgit_plus" | "topk_margin" | "entropy", alg_temp, eps=1e-3, output_history,
  return_dict_in_generate, generation_tokens_hook_func, generation_logits_hook_func)``: pads the prompt with
  masks to ``max_length``; with left padding (an ``attention_mask`` holding zeros) builds a (b, 1, N, N) mask and
  RoPE positions ``cumsum(mask) - 1``; every step is ``self(x, attention_mask, tok_idx)`` (positional
  arguments, a full canvas, 1 NFE), timesteps ``linspace(1, eps, steps + 1)``; ``origin`` reveals each masked
  token with probability ``1 - s / t``, the others commit the ``int(masked * (1 - s / t))`` most confident (all at
  the last step). Revealed tokens are never re-masked.

Differences: small sizes, eager attention only; ``diffusion_generate`` takes a ``generator`` (upstream draws
from torch's global RNG) and returns the sequences (or a namespace with ``sequences`` and ``history``).
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

from relaykit.testing.twins.shared import QwenAttentionProjections, QwenMLP, apply_rotary_pos_emb, seeded

MASK_ID = 151666  # the published Dream mask token (the twin's default vocabulary is small, see tiny_dream)
EOS_ID = 151643


class DreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(
        self,
        vocab_size: int = 64,
        hidden_size: int = 32,
        intermediate_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 2,
        max_position_embeddings: int = 256,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        mask_token_id: int = 63,
        pad_token_id: int = 62,
        eos_token_id: int = 62,
        tie_word_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.mask_token_id = mask_token_id
        super().__init__(
            pad_token_id=pad_token_id, eos_token_id=eos_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs
        )


class DreamRMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


class DreamRotaryEmbedding(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        dim = config.hidden_size // config.num_attention_heads
        self.register_buffer("inv_freq", 1.0 / config.rope_theta ** (torch.arange(0, dim, 2).float() / dim), False)

    def forward(self, like: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # (b, n, d/2)
        emb = torch.cat([freqs, freqs], -1)  # (b, n, d)
        return emb.cos().to(like.dtype), emb.sin().to(like.dtype)


class DreamAttention(QwenAttentionProjections):
    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        q, k, v = self.project(x)  # (b, h, n, d), (b, kv, n, d) x 2
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = self.repeat_kv(k, v)  # (b, h, n, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (b, h, n, n): bidirectional, never causal
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        out = scores.softmax(-1) @ v  # (b, h, n, d)
        return self.output(out)


class DreamDecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.self_attn = DreamAttention(config)
        self.mlp = QwenMLP(config)
        self.input_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamBaseModel(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = DreamRotaryEmbedding(config)

    def forward(self, input_ids: Tensor, attention_mask: Any = None, position_ids: Tensor | None = None) -> Tensor:
        b, n = input_ids.shape
        x = self.embed_tokens(input_ids)  # (b, n, d)
        if position_ids is None:
            position_ids = torch.arange(n, device=input_ids.device).expand(b, n)
        mask = attention_mask.bool() if isinstance(attention_mask, Tensor) else None  # "full" / None: everything
        if mask is not None and mask.dim() == 2:  # (b, n) keys -> (b, 1, n, n)
            mask = mask[:, None, None, :].expand(b, 1, n, n)
        cos, sin = self.rotary_emb(x, position_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)  # (b, n, d): the LM head's input


class DreamModel(PreTrainedModel):
    config_class = DreamConfig
    base_model_prefix = "model"

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.2)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.normal_(module.bias, std=0.02)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Any = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs: Any,
    ) -> MaskedLMOutput:
        hidden = self.model(input_ids, attention_mask, position_ids)
        return MaskedLMOutput(logits=self.lm_head(hidden))  # (b, n, V)

    # ------------------------------------------------------------------ Dream's own sampler
    @torch.no_grad()
    def diffusion_generate(
        self,
        inputs: Tensor,
        attention_mask: Tensor | None = None,
        *,
        max_new_tokens: int,
        steps: int,
        temperature: float = 0.0,
        top_p: float | None = None,
        top_k: int | None = None,
        alg: str = "origin",
        alg_temp: float | None = None,
        eps: float = 1e-3,
        output_history: bool = False,
        return_dict_in_generate: bool = False,
        generation_tokens_hook_func: Any = None,
        generation_logits_hook_func: Any = None,
        generator: torch.Generator | None = None,
    ) -> Any:
        mask_id = self.config.mask_token_id
        tokens_hook = generation_tokens_hook_func or (lambda step, x, logits: x)
        logits_hook = generation_logits_hook_func or (lambda step, x, logits: logits)
        max_length = inputs.shape[1] + max_new_tokens
        x = F.pad(inputs, (0, max_length - inputs.shape[1]), value=mask_id)  # (b, N)
        if attention_mask is not None and bool((attention_mask == 0).any()):
            keep = F.pad(attention_mask, (0, max_length - attention_mask.shape[1]), value=1)  # (b, N)
            tok_idx = keep.long().cumsum(-1) - 1
            tok_idx = tok_idx.masked_fill(keep == 0, 1)
            mask: Any = keep.bool()[:, None, None, :] & keep.bool()[:, None, :, None]  # (b, 1, N, N)
        else:
            tok_idx, mask = None, "full"
        timesteps = torch.linspace(1, eps, steps + 1, device=x.device)
        x = tokens_hook(None, x, None)
        history = [] if output_history else None
        for i in range(steps):
            masked = x == mask_id  # (b, N)
            logits = self(x, mask, tok_idx).logits  # positional arguments, as upstream
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # token shift: i-1 predicts i
            logits = logits_hook(i, x, logits)
            t, s = timesteps[i], timesteps[i + 1]
            picked = logits[masked]  # (m, V)
            if alg == "origin":
                reveal = 1 - s / t if i < steps - 1 else 1.0
                draw = torch.rand(picked.shape[0], device=x.device, generator=generator) < reveal
                _, proposal = _sample(picked, temperature, top_p, top_k, generator)
                values = torch.full_like(proposal, mask_id)
                values[draw] = proposal[draw]
                x[masked] = values
            else:
                confidence, proposal = _sample(
                    picked, temperature, top_p, top_k, generator, margin=alg == "topk_margin", entropy=alg == "entropy"
                )
                full = torch.full(x.shape, -torch.inf, device=x.device, dtype=logits.dtype)
                full[masked] = confidence.to(logits.dtype)
                count = int(masked.sum() / masked.shape[0])
                number = int(count * (1 - s / t)) if i < steps - 1 else count
                if number > 0:
                    if not alg_temp:
                        _, index = full.topk(number, dim=-1)
                    else:
                        index = torch.multinomial((full / alg_temp).softmax(-1), number, generator=generator)
                    values = torch.full_like(x, mask_id)
                    values[masked] = proposal
                    rows = torch.arange(x.shape[0], device=x.device)[:, None]
                    x[rows, index] = values[rows, index]
            x = tokens_hook(i, x, logits)
            if history is not None:
                history.append(x.clone())
        if return_dict_in_generate:
            return SimpleNamespace(sequences=x, history=history)
        return x


def _sample(
    logits: Tensor,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    generator: torch.Generator | None,
    *,
    margin: bool = False,
    entropy: bool = False,
) -> tuple[Tensor, Tensor]:
    """(confidence (m,), token (m,)) for m positions' logits (m, V): argmax at temperature 0, else a draw."""
    if temperature > 0:
        logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p is not None and top_p < 1:
        ordered, order = logits.sort(-1, descending=True)
        drop = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -torch.inf)
    probs = logits.softmax(-1)  # (m, V)
    if temperature > 0:
        token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        confidence = probs.gather(-1, token[:, None]).squeeze(-1)
    else:
        confidence, token = probs.max(-1)
    if margin:
        top2 = probs.topk(2, -1).values
        confidence = top2[:, 0] - top2[:, 1]
    if entropy:
        confidence = (probs * probs.clamp_min(1e-10).log()).sum(-1)  # negative entropy
    return confidence, token


def tiny_dream(*, vocab: int = 64, width: int = 32, layers: int = 2, seed: int = 0) -> DreamModel:
    """A random tiny Dream (mask id = vocab - 1, EOS / pad = vocab - 2), in eval mode."""
    config = DreamConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        mask_token_id=vocab - 1,
        pad_token_id=vocab - 2,
        eos_token_id=vocab - 2,
    )
    return seeded(lambda: DreamModel(config), seed=seed, dtype=torch.float32)
