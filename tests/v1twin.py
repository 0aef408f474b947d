"""A minimal LLaDA-like bidirectional model with a Fast-dLLM v1 style KV cache, and its relay adapter.

Written here (no upstream code) to the facts in shared/backbones.md, as a stand-in until the adapters branch's
LLaDA twin lands: the module tree ``model.transformer.{wte, blocks[i], ln_f, ff_out}`` (every block also has an
``ff_out``: the name clash), no ``position_ids`` (the RoPE position is the index in the cached + current
sequence), a cache that is a Python list of (key, value) per layer, shape (b, heads, L, d), keys stored BEFORE
RoPE, ``replace_position`` (b, L) bool that overwrites the current block's keys and values in place (dual cache),
and an additive ``attention_bias`` (b, 1, q, kv) through which a block-causal mask can be given.

Legend: b batch, q fed positions, L cached positions, kv keys attended, h heads, d head width, D model width.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from relaykit.adapter import Adapter, Side
from relaykit.kvcache import DecodeCall, cache_length, segment_ids

MASK_ID = 47


def _rope(x: Tensor, positions: Tensor) -> Tensor:
    """Rotary embedding of x (b, h, n, d) at absolute positions (n,)."""
    d = x.shape[-1]
    freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=x.dtype, device=x.device) / d))  # (d/2,)
    angle = positions.to(x.dtype)[:, None] * freq[None, :]  # (n, d/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class TwinBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.RMSNorm(width)
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.attn_out = nn.Linear(width, width, bias=False)
        self.ff_norm = nn.RMSNorm(width)
        self.ff_proj = nn.Linear(width, 2 * width, bias=False)
        self.up_proj = nn.Linear(width, 2 * width, bias=False)
        self.ff_out = nn.Linear(2 * width, width, bias=False)

    def _split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)  # (b, h, n, d)

    def forward(
        self,
        x: Tensor,
        *,
        attention_bias: Tensor | None,
        layer_past: tuple[Tensor, Tensor] | None,
        replace_position: Tensor | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h = self.attn_norm(x)
        q, k, v = self._split(self.q_proj(h)), self._split(self.k_proj(h)), self._split(self.v_proj(h))
        n_q = q.shape[2]
        if layer_past is None:
            keys, values = k, v
            q_pos = torch.arange(n_q, device=x.device)
        elif replace_position is None:
            keys, values = torch.cat([layer_past[0], k], 2), torch.cat([layer_past[1], v], 2)  # (b, h, L + q, d)
            q_pos = layer_past[0].shape[2] + torch.arange(n_q, device=x.device)
        else:
            idx = replace_position[0].nonzero().flatten()  # the same slots in every row, as upstream
            keys, values = layer_past[0].clone(), layer_past[1].clone()
            keys[:, :, idx], values[:, :, idx] = k, v  # overwrite the block in place
            q_pos = idx
        present = (keys, values)  # keys cached before RoPE
        k_pos = torch.arange(keys.shape[2], device=x.device)
        scores = _rope(q, q_pos) @ _rope(keys, k_pos).transpose(-1, -2) / q.shape[-1] ** 0.5  # (b, h, q, kv)
        if attention_bias is not None:
            scores = scores + attention_bias
        out = (scores.softmax(-1) @ values).transpose(1, 2).flatten(2)  # (b, q, D)
        x = x + self.attn_out(out)
        h = self.ff_norm(x)
        return x + self.ff_out(nn.functional.silu(self.ff_proj(h)) * self.up_proj(h)), present


@dataclass
class TwinOutput:
    logits: Tensor
    past_key_values: list[tuple[Tensor, Tensor]] | None


class TwinModel(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, width),
                "blocks": nn.ModuleList(TwinBlock(width, heads) for _ in range(layers)),
                "ln_f": nn.RMSNorm(width),
                "ff_out": nn.Linear(width, vocab, bias=False),
            }
        )


class TinyLLaDA(nn.Module):
    """``TinyLLaDA()(input_ids, attention_bias=, past_key_values=, use_cache=, replace_position=)``."""

    def __init__(self, vocab: int = 48, width: int = 32, layers: int = 2, heads: int = 4, max_len: int = 128) -> None:
        super().__init__()
        self.config = SimpleNamespace(mask_token_id=MASK_ID, max_sequence_length=max_len, d_model=width)
        self.model = TwinModel(vocab, width, layers, heads)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.transformer["wte"]

    def get_output_embeddings(self) -> nn.Module:
        return self.model.transformer["ff_out"]

    def forward(
        self,
        input_ids: Tensor,
        attention_bias: Tensor | None = None,
        past_key_values: list[tuple[Tensor, Tensor]] | None = None,
        use_cache: bool = False,
        replace_position: Tensor | None = None,
    ) -> TwinOutput:
        t = self.model.transformer
        x = t["wte"](input_ids)  # (b, q, D)
        presents = []
        for i, block in enumerate(t["blocks"]):
            past = past_key_values[i] if past_key_values is not None else None
            x, present = block(x, attention_bias=attention_bias, layer_past=past, replace_position=replace_position)
            presents.append(present)
        logits = t["ff_out"](t["ln_f"](x))  # (b, q, V)
        return TwinOutput(logits, presents if use_cache else None)


class TwinAdapter(Adapter):
    """Relay adapter for the twin: v1 cache arguments on both sides of the decoding seam."""

    name = "v1twin"
    decode_modes = ("prefix", "dual", "sub_block")

    def embedding(self, model: nn.Module) -> nn.Module:
        return model.model.transformer["wte"]

    def final_hidden(self, model: nn.Module) -> tuple[nn.Module, Side]:
        return model.model.transformer["ln_f"], "output"

    def call_positions(self, input_ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        b, q = input_ids.shape
        replace = kwargs.get("replace_position")
        if replace is not None:  # dual cache: the fed tokens sit at the True slots
            return replace.nonzero()[:, 1].view(b, q)
        past = cache_length(kwargs.get("past_key_values"))
        return (past + torch.arange(q, device=input_ids.device)).expand(b, q)

    def decode_kwargs(self, model: nn.Module, call: DecodeCall) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if call.cache is not None or call.store:
            kwargs["use_cache"] = True
        if call.cache is not None:
            kwargs["past_key_values"] = call.cache
        in_place = call.replaced is not None and call.cache is not None and call.cache_length >= call.stop
        if in_place:
            replace = torch.zeros(call.batch, call.cache_length, dtype=torch.bool, device=call.device)
            replace[:, call.start : call.stop] = True
            kwargs["replace_position"] = replace
        if call.attention == "block_causal":
            queries = torch.arange(call.start, call.stop, device=call.device)
            keys = torch.arange(call.cache_length if in_place else call.cache_length + call.length, device=call.device)
            ok = segment_ids(keys, call.segments)[None, :] <= segment_ids(queries, call.segments)[:, None]  # (q, kv)
            dtype = next(model.parameters()).dtype
            bias = torch.zeros(ok.shape, dtype=dtype, device=call.device).masked_fill(~ok, torch.finfo(dtype).min)
            kwargs["attention_bias"] = bias[None, None].expand(call.batch, 1, -1, -1)  # (b, 1, q, kv)
        return kwargs
