"""Relay on your own masked diffusion model in a few lines: name two modules, train, decode.

    python examples/custom_mdm/relay_on_my_mdm.py --tiny

The generic adapter needs the dotted path of the token embedding (relay adds R(h) to its output) and of the
module whose output is the last hidden state (captured as the next step's h), plus the mask token id. Any
nn.Module works; HF models with ``get_input_embeddings()`` / ``get_output_embeddings()`` need no paths at all.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn
from tqdm.auto import tqdm

import relaykit
from relaykit import RelayModel, Threshold

VOCAB, MASK = 12, 11  # digits 0..9, a separator, the mask token


class MyMDM(nn.Module):
    """A user's model: bidirectional transformer, token embedding ``tok``, final norm ``norm``, LM head."""

    def __init__(self, width: int = 32, layers: int = 2, max_len: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(input_ids) + self.pos[: input_ids.shape[1]]  # (b, n, d)
        return self.head(self.norm(self.encoder(x)))  # (b, n, V)


def sorting_task(batch: int, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 = [digits ; 10 ; sorted digits], maskable = the sorted half."""
    digits = torch.randint(0, 10, (batch, n), generator=g)
    x0 = torch.cat([digits, torch.full((batch, 1), 10), digits.sort(-1).values], dim=1)
    return x0, torch.arange(2 * n + 1) > n


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="accepted for symmetry: this example is always tiny")
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    model = MyMDM()
    relay = relaykit.attach(model, embedding="tok", final_hidden="norm", mask_token_id=MASK)  # 1. attach
    opt = torch.optim.AdamW(relay.parameters(), lr=3e-3)
    for _ in tqdm(range(args.steps), desc="relay training", unit="step"):  # 2. train (K = 2, BPTT through h)
        x0, maskable = sorting_task(32, 6, g)
        res = relaykit.bptt_rollout(relay, x0, maskable=maskable.expand_as(x0), k=2, policy=Threshold(0.9))
        res.loss.backward()
        opt.step()
        opt.zero_grad()

    x0, maskable = sorting_task(64, 6, g)  # 3. decode: relaykit's loop, or your own inside relay.session()
    out = relaykit.generate(relay, x0[:, :7], max_new_tokens=6, policy=Threshold(0.9))
    accuracy = (out.sequences == x0).all(-1).float().mean().item()
    with tempfile.TemporaryDirectory() as folder:  # 4. save / load: the channel and the trained backbone
        relay.save_pretrained(folder)
        relay.detach()
        relay = RelayModel.from_pretrained(model, folder)
    result = {"loss": res.loss.item(), "sorted_exactly": accuracy, "mean_nfe": out.nfe.float().mean().item()}
    print(", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
