"""Tiny backbones built from configs for the tests: a plain PyTorch MDM and small transformers models."""

from __future__ import annotations

import torch
from torch import nn

from relaykit.testing.encoder import ToyEncoder


class TinyMDM(nn.Module):
    """A user's own MDM with nested modules: ``encoder.tok_emb`` and ``encoder.norm`` as in the README."""

    def __init__(self, vocab: int = 32, width: int = 16, layers: int = 2, max_len: int = 64) -> None:
        super().__init__()
        self.encoder = ToyEncoder(vocab, width, layers, heads=2, max_len=max_len, ffn_ratio=2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids)


MASK_ID = 31


def tiny_qwen2(vocab: int = 48, width: int = 32, layers: int = 2, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A transformers Qwen2ForCausalLM (Fast-dLLM v2's base) with random weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    config.mask_token_id = vocab - 1
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(dtype).eval()


def tiny_llama_bidirectional(vocab: int = 48, width: int = 32, layers: int = 2) -> nn.Module:
    """A transformers LlamaForCausalLM with is_causal=False: a LLaDA-like bidirectional model on transformers 5.x.

    transformers 4.x ignores ``config.is_causal`` and runs it causally unless a 4D mask is passed
    (``relaykit.generate(..., attention="bidirectional")`` passes one; ``relaykit.causality`` reads which).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    config.is_causal = False
    config.mask_token_id = vocab - 1
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()
