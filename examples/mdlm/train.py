"""Relay SFT for MDLM (and BD3-LM): train the relay channel with truncated BPTT (K = 2).

    python examples/mdlm/train.py --tiny --out runs/mdlm-relay                          # offline, CPU, seconds
    python examples/mdlm/train.py --model kuleshov-group/mdlm-owt --data sft.jsonl --out runs/mdlm-relay \\
        --max-length 1024

The model is MDLM's DiT (``AutoModelForMaskedLM`` with ``trust_remote_code``; its tokenizer is GPT-2's). Relay
hooks ``vocab_embed`` (a raw embedding parameter) and the input of ``output_layer``; the mask id is the last
vocabulary entry. sigma = 0 is fed (MDLM's default ``time_conditioning=False``). A BD3-LM checkpoint works the
same way: ``bptt_rollout`` then feeds its [z ; x0] training layout (``--max-length`` = its ``model_length``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import relay_sft  # noqa: E402

import relaykit  # noqa: E402

TINY_VOCAB = 48  # the twin's vocabulary (its last id is the mask token)
TINY = dict(steps=30, batch_size=8, lr=3e-3, out=Path("runs/mdlm-relay"))


def load(args) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer or None): the tiny DiT twin, or MDLM from a path / hub id."""
    if args.tiny:
        from relaykit.testing.twins.mdlm import tiny_dit

        return tiny_dit(vocab=TINY_VOCAB, seed=args.seed), None
    return relay_sft.from_hub(args, "AutoModelForMaskedLM", dtype=None, tokenizer="gpt2")  # GPT-2's tokenizer


def main(argv: list[str] | None = None) -> list[float]:
    args = relay_sft.finish_args(relay_sft.train_args(__doc__), argv, tiny_defaults=TINY)
    model, tokenizer = load(args)
    relay = relaykit.attach(model)  # picks the "mdlm" adapter
    data = relay_sft.sft_data(args, tokenizer, relay.mask_token_id, tiny_vocab=TINY_VOCAB)  # --tiny: a toy task
    return relay_sft.train(relay, data, args)


if __name__ == "__main__":
    main()
