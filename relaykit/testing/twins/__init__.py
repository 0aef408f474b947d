"""Test twins: small re-implementations of backbones whose modeling code is not on PyPI.

Each twin keeps its upstream family's module tree, parameter names, forward keyword arguments and cache
behaviour (read from the public upstream code, never copied), so adapters and upstream-style decoding loops run
through them unchanged. Every deliberate difference from upstream is listed in the twin's module docstring.

The twins import ``transformers`` (the ``test`` / ``examples`` extra). Example::

    from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2
    model = tiny_fast_dllm_v2()          # Fast_dLLM_QwenForCausalLM with random weights and its own generate()

- ``twins.llada``: ``LLaDAModelLM`` (GSAI-ML/LLaDA hub file, and the Fast-dLLM v1 copy with prefix/dual caches).
- ``twins.mdlm``: MDLM's ``DIT`` and the HF ``MDLM`` wrapper.
- ``twins.bd3lm``: BD3-LM's HF ``BD3LM`` (block KV cache, ``[x_t ; x_0]`` training layout).
- ``twins.fast_dllm_v2``: ``Fast_dLLM_QwenForCausalLM`` with its own ``generate()`` (its config and decoder layers
  in ``twins.fast_dllm_v2_layers``, ``generate()`` in ``twins.fast_dllm_v2_generate``).
- ``twins.dream``: ``DreamModel`` with its own ``diffusion_generate()``.
- ``twins.shared``: the building blocks several twins share (RoPE, Qwen2 attention projections and MLP,
  block-diffusion masks, seeded construction).
"""

from __future__ import annotations

import torch
from torch import nn


def perturb_(model: nn.Module, *, std: float = 0.2, seed: int = 0) -> nn.Module:
    """Add seeded Gaussian noise to every parameter, in place, and return the model.

    Upstream initialisations zero some branches (MDLM's adaLN and output layer), which would make a random twin
    predict a constant; tests perturb the weights so outputs depend on every input.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64) * std
            p.add_(noise.to(device=p.device, dtype=p.dtype))
    return model
