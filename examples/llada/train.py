"""Relay SFT for LLaDA: train the relay channel with truncated BPTT (K = 2) on prompt/response pairs.

    python examples/llada/train.py --tiny --out runs/llada-relay                       # offline, CPU, seconds
    python examples/llada/train.py --model GSAI-ML/LLaDA-8B-Instruct --data sft.jsonl --out runs/llada-relay

Real use needs transformers 4.38-4.57 (LLaDA's remote code; 5.x cannot load it, ML-GSAI/LLaDA#130) and a GPU.
The model is LLaDAModelLM (``AutoModel`` with ``trust_remote_code``); relay detects the family, hooks
``model.transformer.wte`` and ``model.transformer.ln_f`` and reads the mask id 126336 from the config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import relay_sft  # noqa: E402

import relaykit  # noqa: E402

TINY_VOCAB = 64  # the twin's vocabulary (its last id is the mask token)
TINY = dict(steps=30, batch_size=8, lr=3e-3, out=Path("runs/llada-relay"))


def load(args) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer or None): the tiny twin, or LLaDA from a path / hub id."""
    if args.tiny:
        from relaykit.testing.twins.llada import tiny_llada

        return tiny_llada(vocab=TINY_VOCAB, seed=args.seed), None
    relay_sft.check_transformers("4.38", "4.57", "LLaDA")
    return relay_sft.from_hub(args, "AutoModel")  # bfloat16, trust_remote_code


def main(argv: list[str] | None = None) -> list[float]:
    args = relay_sft.finish_args(relay_sft.train_args(__doc__), argv, tiny_defaults=TINY)
    model, tokenizer = load(args)
    relay = relaykit.attach(model)  # picks the "llada" adapter
    data = relay_sft.sft_data(args, tokenizer, relay.mask_token_id, tiny_vocab=TINY_VOCAB)  # --tiny: a toy task
    return relay_sft.train(relay, data, args)


if __name__ == "__main__":
    main()
