"""RelayChannel: the learned map R from last-layer hidden states to input-embedding space.

Relay (Learned Relay Representations, arXiv:2605.22967) computes h_{k+1} = f(Emb(z_k) + R(h_k)). R is this
module. Its last projection is zero-initialised (as x-transformers does for new branches), so attaching a fresh
channel changes nothing: R(h) is exactly 0 for any finite h and the backbone's outputs are bit-identical.

Legend: b batch, n positions, d hidden width of the backbone, e embedding width (may differ from d).

Example::

    >>> import torch
    >>> r = RelayChannel(ChannelConfig(hidden_size=16, embedding_size=8, kind="mlp"))
    >>> r(torch.randn(2, 5, 16)).abs().max().item()               # zero until trained
    0.0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from relaykit.checks import is_int

ChannelKind = Literal["linear", "mlp", "gated"]
NormKind = Literal["layernorm", "rmsnorm", "none"]
_KINDS = ("linear", "mlp", "gated")
_NORMS = ("layernorm", "rmsnorm", "none")


@dataclass
class ChannelConfig:
    """Shape and design of a relay channel.

    Attributes:
        hidden_size: width d of the backbone's last hidden state (the channel's input).
        embedding_size: width e of the token embedding (the channel's output); defaults to ``hidden_size``.
        kind: ``"linear"`` (norm then one projection, the default), ``"mlp"`` (norm, d -> m -> e with GELU) or
            ``"gated"`` (norm, then sigmoid(W_g h) * W_v h).
        norm: normalisation applied to h first: ``"layernorm"`` (default), ``"rmsnorm"`` or ``"none"``.
        mlp_ratio: hidden width of the ``"mlp"`` kind as a multiple of ``hidden_size``.
        bias: whether projections carry a bias.
    """

    hidden_size: int
    embedding_size: int | None = None
    kind: ChannelKind = "linear"
    norm: NormKind = "layernorm"
    mlp_ratio: float = 1.0
    bias: bool = True

    def __post_init__(self) -> None:
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        for name in ("hidden_size", "embedding_size"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"ChannelConfig.{name} must be a positive int, got {value!r}")
        if self.kind not in _KINDS:
            raise ValueError(f"ChannelConfig.kind must be one of {_KINDS}, got {self.kind!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"ChannelConfig.norm must be one of {_NORMS}, got {self.norm!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"ChannelConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Names a user may pass to ``attach(..., **channel_options)`` (both widths are resolved from the backbone)."""
        return tuple(f.name for f in fields(cls) if f.name not in ("hidden_size", "embedding_size"))


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(width)
    if kind == "rmsnorm":
        return nn.RMSNorm(width)
    return nn.Identity()


class RelayChannel(nn.Module):
    """The learned relay channel R: (b, n, d) hidden states -> (b, n, e) additions to the input embeddings."""

    def __init__(self, config: ChannelConfig) -> None:
        super().__init__()
        self.config = config
        d, e = config.hidden_size, config.embedding_size
        assert e is not None  # filled in by ChannelConfig.__post_init__
        self.norm = _norm(config.norm, d)
        if config.kind == "linear":
            self.proj = nn.Linear(d, e, bias=config.bias)
        elif config.kind == "mlp":
            m = max(1, round(d * config.mlp_ratio))
            self.fc = nn.Linear(d, m, bias=config.bias)
            self.act = nn.GELU()
            self.proj = nn.Linear(m, e, bias=config.bias)
        else:  # gated
            self.gate = nn.Linear(d, e, bias=config.bias)
            self.proj = nn.Linear(d, e, bias=config.bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the output projection so that R(h) == 0 exactly: attaching is the identity until trained."""
        nn.init.zeros_(self.proj.weight)
        if self.proj.bias is not None:
            nn.init.zeros_(self.proj.bias)

    def _apply(self, fn: Any, recurse: bool = True) -> RelayChannel:
        """Module.to / to_empty / cuda ... go through here. A channel built on the meta device holds no values;
        when ``to_empty()`` materialises it (``model.to_empty(device=...)`` after a meta-device attach) its memory
        is garbage, so it is initialised afresh: norms to identity, inner projections at random, the output
        projection at zero, and relay is again the identity until trained."""
        was_meta = any(t.is_meta for t in self.parameters())
        super()._apply(fn, recurse)
        if was_meta and not any(t.is_meta for t in self.parameters()):
            with torch.no_grad():
                for module in self.modules():
                    if module is not self and hasattr(module, "reset_parameters"):
                        module.reset_parameters()
                self.reset_parameters()
        return self

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden (b, n, d) -> relay addition (b, n, e), in the channel's parameter dtype unless autocast rules."""
        dtype = self.proj.weight.dtype
        x = self.norm(hidden if hidden.dtype == dtype else hidden.to(dtype))  # (b, n, d)
        if self.config.kind == "linear":
            return self.proj(x)  # (b, n, e)
        if self.config.kind == "mlp":
            return self.proj(self.act(self.fc(x)))  # (b, n, m) -> (b, n, e)
        return torch.sigmoid(self.gate(x)) * self.proj(x)  # (b, n, e)

    def extra_repr(self) -> str:
        c = self.config
        return f"kind={c.kind}, norm={c.norm}, hidden={c.hidden_size} -> embedding={c.embedding_size}"
