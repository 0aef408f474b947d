"""The decoding loop relaykit.generate replaces, for the decode benchmark: Fast-dLLM v1's prefix-cache loop (LLaDA).

Legend: b batch, T canvas length (prompt + new tokens), B block length, V vocabulary.

Restated from the published algorithm (Fast-dLLM v1, ``generate_with_prefix_cache`` with a confidence threshold),
as ``tests/test_llada_loops.py`` runs it against the LLaDA twin: for each block, one full forward that fills
the KV cache (list of ``(k, v)`` per layer) and is the block's first step, then steps that feed ``x[:, s:]``
against the prefix cache cropped to ``s``. Each step commits every masked position of the block whose
confidence (softmax max-probability) is >= ``threshold``, and always the most confident one. The mask token is
never predicted (its logit is removed, as relaykit's policies do; a random twin would predict it otherwise).

Example::

    >>> from relaykit.testing.twins.llada import tiny_llada
    >>> model = tiny_llada()
    >>> x, nfe = prefix_cache_loop(model, torch.randint(0, 62, (1, 4)), gen_length=8, block_length=4,
    ...                            threshold=0.9, mask_id=63)
    >>> x.shape, bool((x == 63).any())
    (torch.Size([1, 12]), False)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _transfer(logits: Tensor, todo: Tensor, threshold: float, mask_id: int) -> tuple[Tensor, Tensor]:
    """(tokens (b, q), commit (b, q)): argmax without the mask token; commit confident ones, at least the best."""
    logits = logits.float().clone()  # (b, q, V)
    logits[..., mask_id] = float("-inf")
    confidence, tokens = logits.softmax(-1).max(-1)  # (b, q), (b, q)
    confidence = torch.where(todo, confidence, torch.full_like(confidence, float("-inf")))
    commit = todo & (confidence >= threshold)
    best = confidence.argmax(-1, keepdim=True)  # (b, 1)
    commit.scatter_(1, best, torch.ones_like(best, dtype=torch.bool))
    return tokens, commit & todo


@torch.no_grad()
def prefix_cache_loop(
    model: nn.Module, prompt: Tensor, *, gen_length: int, block_length: int, threshold: float, mask_id: int
) -> tuple[Tensor, int]:
    """Fast-dLLM v1's prefix-cache decoding of ``gen_length`` tokens after ``prompt`` (b, P); returns (x (b, T), NFE).

    ``model(x, use_cache=True)`` must return ``.logits`` (b, q, V) and ``.past_key_values`` (a list of (k, v) per
    layer, (b, heads, L, d)), and accept ``past_key_values=`` for a prefix: the LLaDA / Fast-dLLM v1 convention.
    """
    b, p = prompt.shape
    x = torch.full((b, p + gen_length), mask_id, dtype=torch.long, device=prompt.device)  # (b, T)
    x[:, :p] = prompt
    nfe = 0
    for s in range(p, p + gen_length, block_length):
        e = s + block_length
        output = model(x, use_cache=True)  # the refresh: caches every position, and is the block's first step
        nfe += 1
        todo = x == mask_id  # (b, T)
        todo[:, e:] = False
        tokens, commit = _transfer(output.logits, todo, threshold, mask_id)
        x = torch.where(commit, tokens, x)
        past = [tuple(t[:, :, :s] for t in layer) for layer in output.past_key_values]  # the prefix 0 .. s-1
        while bool((x[:, s:e] == mask_id).any()):
            logits = model(x[:, s:], past_key_values=past, use_cache=True).logits  # (b, T - s, V)
            nfe += 1
            todo = x[:, s:] == mask_id
            todo[:, block_length:] = False
            tokens, commit = _transfer(logits, todo, threshold, mask_id)
            x[:, s:] = torch.where(commit, tokens, x[:, s:])
    return x, nfe
