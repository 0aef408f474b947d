"""GenerationConfig: every option of :func:`relaykit.generate` in one dataclass, and the per-step token choice.

Field names follow transformers' ``GenerationConfig`` where the meaning is the same (``max_new_tokens``,
``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``eos_token_id``, ``pad_token_id``, ``suppress_tokens``,
``use_cache``); the rest are the masked-diffusion options (``block_size``, ``sub_block_size``, ``policy``,
``attention``).

Legend: b batch, n positions of the active block, V vocabulary.

How a step chooses tokens. Greedy (the default): every masked position proposes its most probable token and the
policy commits the most confident positions (max probability), exactly as before sampling existed. Sampling
(``do_sample=True``): every position draws a token from ``softmax(logits / temperature)`` restricted to its
``top_k`` most probable tokens and its nucleus ``top_p``, with the ``torch.Generator`` passed to ``generate``
(reproducible); its confidence is the drawn token's probability (LLaDA / Fast-dLLM's rule). ``suppress_tokens``
are never proposed (nor is the mask token).

Example::

    >>> cfg = GenerationConfig(max_new_tokens=64, block_size=32, do_sample=True, temperature=0.7, top_p=0.9,
    ...                        eos_token_id=[2, 7])
    >>> res = relay.generate(prompt, generation_config=cfg, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from relaykit.policies import Policy


@dataclass
class GenerationConfig:
    """Options of :func:`relaykit.generate` (keyword arguments of ``generate`` override the fields).

    Attributes:
        max_new_tokens: masks appended after the prompt (0: infill the masks of ``input_ids``).
        block_size: decode in blocks of this size, left to right (None: one block).
        sub_block_size: inside a block, sub-blocks left to right (Fast-dLLM v2).
        policy: which masked positions a step commits (default ``Threshold(0.9)``).
        use_cache: False, True / "prefix", "dual" or "sub_block" (see ``relaykit.generate``).
        attention: "bidirectional" or "block_causal" (default: the adapter's / the model's).
        do_sample: draw tokens instead of taking the most probable one.
        temperature: divides the logits before sampling (> 0; only with ``do_sample``).
        top_k: sample among the k most probable tokens (only with ``do_sample``).
        top_p: sample within the smallest set of tokens whose probability reaches top_p (only with ``do_sample``).
        eos_token_id: end-of-sequence / stop token id(s). A row whose decoded block holds one stops: its later
            blocks are filled with ``pad_token_id`` and cost it no forward pass.
        pad_token_id: what fills a stopped row's later blocks (default: the first ``eos_token_id``).
        suppress_tokens: token ids never proposed.
    """

    max_new_tokens: int | None = None
    block_size: int | None = None
    sub_block_size: int | None = None
    policy: Policy | None = None
    use_cache: bool | str = False
    attention: str | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    suppress_tokens: list[int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise TypeError(f"do_sample must be a bool, got {self.do_sample!r}")
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool):
            raise TypeError(f"temperature must be a number, got {self.temperature!r}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 when sampling, got {self.temperature!r} (greedy: do_sample=False)"
            )
        top_k = self.top_k
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {self.top_k!r}")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")
        sampling_only = {
            "temperature": self.temperature not in (1.0, 0.0),
            "top_k": self.top_k is not None,
            "top_p": self.top_p is not None,
        }
        unused = [name for name, given in sampling_only.items() if given]
        if unused and not self.do_sample:
            raise ValueError(
                f"{', '.join(unused)} only apply when sampling: pass do_sample=True (greedy decoding ignores them)"
            )
        for name in ("eos_token_id", "suppress_tokens"):
            _ids(getattr(self, name), name)
        if self.pad_token_id is not None and (not isinstance(self.pad_token_id, int) or self.pad_token_id < 0):
            raise ValueError(f"pad_token_id must be a token id (int >= 0) or None, got {self.pad_token_id!r}")

    @property
    def eos_ids(self) -> list[int]:
        """``eos_token_id`` as a list (empty when unset)."""
        return _ids(self.eos_token_id, "eos_token_id")

    @property
    def fill_id(self) -> int | None:
        """The token that fills a stopped row: ``pad_token_id``, else the first EOS id."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_ids[0] if self.eos_ids else None

    def updated(self, **overrides: Any) -> GenerationConfig:
        """A copy with the given fields replaced (None values are ignored: "not given")."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; GenerationConfig has {sorted(names)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _ids(value: Any, name: str) -> list[int]:
    if value is None:
        return []
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                       for i in items):  # fmt: skip
        raise ValueError(f"{name} must be a token id or a list of token ids (ints >= 0), got {value!r}")
    return [int(i) for i in items]


def choose_tokens(
    logits: Tensor, config: GenerationConfig, *, mask_token_id: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor] | None:
    """Per-position (confidence (b, n), proposed token (b, n)) under ``config``, or None for plain greedy.

    None means "no option changes the greedy choice": the caller keeps the default path (bit-identical to
    decoding without a config). ``logits`` (b, n, V) are aligned with the tokens.
    """
    suppress = _ids(config.suppress_tokens, "suppress_tokens")
    if not config.do_sample and not suppress:
        return None
    scores = logits.float()  # (b, n, V)
    banned = [i for i in (mask_token_id, *suppress) if i < scores.shape[-1]]  # ids past the head: never proposed
    scores = scores.index_fill(-1, torch.tensor(banned, dtype=torch.long, device=scores.device), float("-inf"))
    if not config.do_sample:
        probs = scores.softmax(-1)  # (b, n, V)
        confidence, token = probs.max(-1)
        return confidence, token
    scores = scores / float(config.temperature)
    if config.top_k is not None and config.top_k < scores.shape[-1]:
        kth = scores.topk(config.top_k, dim=-1).values[..., -1:]  # (b, n, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1:
        ordered, order = scores.sort(-1, descending=True)  # (b, n, V)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # probability mass above each token
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= config.top_p)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = scores.softmax(-1)  # (b, n, V)
    flat = probs.reshape(-1, probs.shape[-1])  # (b*n, V)
    token = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])  # (b, n)
    confidence = probs.gather(-1, token.unsqueeze(-1)).squeeze(-1)  # (b, n)
    return confidence, token
