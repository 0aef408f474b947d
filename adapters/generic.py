"""GenericAdapter: relay on any MDM given two module paths, or any HF model with the embedding getters.

Example::

    relay = relaykit.attach(model, embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=3)
    relay = relaykit.attach(hf_model, mask_token_id=mask_id)   # uses get_input/output_embeddings()

``final_hidden`` names the module whose OUTPUT is the last hidden state; add ``":input"`` to read a module's
input instead (``final_hidden="lm_head:input"``), which is what the HF getter path does with the LM head.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from relaykit.adapter import Adapter
from relaykit.resolve import Side, candidates, resolve_module
from relaykit.shift import check_token_shift


def _split_side(spec: str) -> tuple[str, Side]:
    path, sep, side = spec.rpartition(":")
    if not sep:
        return spec, "output"
    if side not in ("input", "output"):
        raise ValueError(f"final_hidden {spec!r}: the part after ':' must be 'input' or 'output', got {side!r}")
    return path, side  # type: ignore[return-value]


class GenericAdapter(Adapter):
    """Resolve modules by exact dotted paths, else through ``get_input_embeddings`` / ``get_output_embeddings``.

    Args:
        embedding: dotted path of the token embedding module, or None for ``model.get_input_embeddings()``.
        final_hidden: dotted path of the module whose output is the last hidden state (``"path:input"`` for its
            input), or None for the input of ``model.get_output_embeddings()``.
        token_shift: 1 when the hidden state at i predicts token i + 1 (AR-initialised MDMs), else 0.
    """

    name = "generic"

    def __init__(
        self,
        embedding: str | None = None,
        final_hidden: str | None = None,
        *,
        token_shift: int = 0,
    ) -> None:
        if embedding is not None and not isinstance(embedding, str):
            raise TypeError(f"embedding must be a dotted module path (str) or None, got {type(embedding).__name__}")
        if final_hidden is not None and not isinstance(final_hidden, str):
            raise TypeError(
                f"final_hidden must be a dotted module path (str) or None, got {type(final_hidden).__name__}"
            )
        self.embedding_path = embedding
        self.final_hidden_spec = final_hidden
        self.token_shift = check_token_shift(token_shift)

    def embedding(self, model: nn.Module) -> nn.Module:
        if self.embedding_path is not None:
            return resolve_module(model, self.embedding_path, role="embedding")
        getter = getattr(model, "get_input_embeddings", None)
        module = getter() if callable(getter) else None
        if not isinstance(module, nn.Module):
            found = candidates(model, (nn.Embedding,))
            raise AttributeError(
                f"{type(model).__name__} has no get_input_embeddings(); pass embedding='<dotted path>'. "
                f"Embedding modules found: {found or 'none'}"
            )
        return module

    def final_hidden(self, model: nn.Module) -> tuple[nn.Module, Side]:
        if self.final_hidden_spec is not None:
            path, side = _split_side(self.final_hidden_spec)
            return resolve_module(model, path, role="final_hidden"), side
        getter = getattr(model, "get_output_embeddings", None)
        head = getter() if callable(getter) else None
        if not isinstance(head, nn.Module):
            norms = candidates(model, (nn.LayerNorm, nn.RMSNorm))
            raise AttributeError(
                f"{type(model).__name__} has no get_output_embeddings(); pass final_hidden='<dotted path>' (the "
                f"module whose output is the last hidden state). Norm modules found: {norms or 'none'}"
            )
        return head, "input"

    def to_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "embedding": self.embedding_path,
            "final_hidden": self.final_hidden_spec,
            "token_shift": self.token_shift,
        }
