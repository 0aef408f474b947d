"""Tiny backbones built from configs for the tests: a plain PyTorch MDM and small transformers models."""

from __future__ import annotations

import torch
from torch import nn


class TinyEncoder(nn.Module):
    """A bidirectional transformer encoder: the simplest masked diffusion backbone a user might write."""

    def __init__(self, vocab: int = 32, width: int = 16, layers: int = 2, heads: int = 2, max_len: int = 64) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, width)
        self.pos_emb = nn.Parameter(torch.randn(max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(input_ids) + self.pos_emb[: input_ids.shape[1]]  # (b, n, d)
        return self.head(self.norm(self.blocks(x)))  # (b, n, V)


class TinyMDM(nn.Module):
    """A user's own MDM with nested modules: ``encoder.tok_emb`` and ``encoder.norm`` as in the README."""

    def __init__(self, vocab: int = 32, width: int = 16, layers: int = 2, max_len: int = 64) -> None:
        super().__init__()
        self.encoder = TinyEncoder(vocab, width, layers, max_len=max_len)

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
    """A transformers LlamaForCausalLM with is_causal=False: a LLaDA-like bidirectional model."""
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
