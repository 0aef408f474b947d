"""A plain PyTorch masked diffusion model for Sudoku, and relay attached to it with the generic adapter.

Tokens: 0 is the mask (a blank cell), 1..9 the digits. Each of the 81 cells also gets its row, column and box
embedding, so the encoder sees the puzzle's structure without having to learn positions.

Legend: b batch, n = 81 cells, d width, V = 10 tokens.

Example (the whole of "wrap your own MDM")::

    >>> import relaykit
    >>> model = SudokuMDM(width=32, layers=1, heads=2)
    >>> relay = relaykit.attach(model, embedding="tok", final_hidden="norm", mask_token_id=MASK)
    >>> out = relay(torch.zeros(2, 81, dtype=torch.long))           # out.logits (2, 81, 10), out.state
    >>> out = relay(torch.zeros(2, 81, dtype=torch.long), state=out.state)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

import relaykit

MASK = 0
VOCAB = 10


@dataclass
class ModelConfig:
    """Size of the encoder: width d, number of layers, attention heads, feed-forward multiple; ``tied`` shares the
    token embedding with the output head (Emb = UnEmb^T, the paper's headline rows)."""

    width: int = 128
    layers: int = 4
    heads: int = 4
    ff_mult: int = 4
    tied: bool = False

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class SudokuMDM(nn.Module):
    """A bidirectional transformer over the 81 cells: tokens (b, 81) -> logits (b, 81, 10)."""

    def __init__(self, width: int = 128, layers: int = 4, heads: int = 4, ff_mult: int = 4, tied: bool = False) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, width)
        self.row = nn.Embedding(9, width)
        self.col = nn.Embedding(9, width)
        self.box = nn.Embedding(9, width)
        cells = torch.arange(81)
        self.register_buffer("cell_row", cells // 9, persistent=False)
        self.register_buffer("cell_col", cells % 9, persistent=False)
        self.register_buffer("cell_box", (cells // 27) * 3 + (cells % 9) // 3, persistent=False)
        layer = nn.TransformerEncoderLayer(
            width, heads, ff_mult * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)  # its output is the last hidden state relay carries
        self.head = nn.Linear(width, VOCAB)
        for emb in (self.tok, self.row, self.col, self.box):
            nn.init.normal_(emb.weight, std=0.02)
        if tied:
            self.head.weight = self.tok.weight  # (V, d) shared: logits = h @ Emb^T + bias

    @classmethod
    def from_config(cls, config: ModelConfig) -> SudokuMDM:
        return cls(**config.to_dict())

    def forward(self, input_ids: Tensor) -> Tensor:
        where = self.row(self.cell_row) + self.col(self.cell_col) + self.box(self.cell_box)  # (n, d)
        x = self.tok(input_ids) + where  # (b, n, d); relay adds R(h) to the tok output
        return self.head(self.norm(self.blocks(x)))  # (b, n, V)


def attach_relay(
    model: SudokuMDM, *, kind: str = "linear", update: str = "masked", empty: str = "skip"
) -> relaykit.RelayModel:
    """Relay on the Sudoku MDM through the generic adapter: two module paths and the mask id."""
    return relaykit.attach(
        model,
        embedding="tok",
        final_hidden="norm",
        mask_token_id=MASK,
        kind=kind,  # type: ignore[arg-type]
        update=update,  # type: ignore[arg-type]
        empty=empty,  # type: ignore[arg-type]
    )
