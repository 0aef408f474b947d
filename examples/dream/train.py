"""Relay SFT for Dream: train the relay channel with truncated BPTT (K = 2) on prompt/response pairs.

    python examples/dream/train.py --tiny --out runs/dream-relay                        # offline, CPU, seconds
    python examples/dream/train.py --model Dream-org/Dream-v0-Instruct-7B --data sft.jsonl --out runs/dream-relay

Dream's remote code is published for transformers 4.46.2 (other versions untested upstream; the example warns) and
needs a GPU for the 7B. The model is DreamModel (``AutoModel`` with ``trust_remote_code``); relay detects the
family, hooks ``model.embed_tokens`` and ``model.norm``, reads the mask id 151666 from the config and aligns
Dream's token shift (the hidden state at i predicts token i + 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import relay_sft  # noqa: E402

import relaykit  # noqa: E402

TINY_VOCAB = 64  # the twin's vocabulary (its last id is the mask token)
TINY = dict(steps=30, batch_size=8, lr=3e-3, out=Path("runs/dream-relay"))


def load(args) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer or None): the tiny twin, or Dream from a path / hub id."""
    if args.tiny:
        from relaykit.testing.twins.dream import tiny_dream

        return tiny_dream(vocab=TINY_VOCAB, seed=args.seed), None
    relay_sft.check_transformers("4.46", "4.46", "Dream")
    return relay_sft.from_hub(args, "AutoModel")  # bfloat16, trust_remote_code


def main(argv: list[str] | None = None) -> list[float]:
    args = relay_sft.finish_args(relay_sft.train_args(__doc__), argv, tiny_defaults=TINY)
    model, tokenizer = load(args)
    relay = relaykit.attach(model)  # picks the "dream" adapter
    data = relay_sft.sft_data(args, tokenizer, relay.mask_token_id, tiny_vocab=TINY_VOCAB)  # --tiny: a toy task
    return relay_sft.train(relay, data, args)


if __name__ == "__main__":
    main()
