"""Decode with Dream's OWN sampler (``model.diffusion_generate``, unchanged) inside ``relay.session()``.

    python examples/dream/generate.py --tiny --relay runs/dream-relay                     # after train.py --tiny
    python examples/dream/generate.py --model Dream-org/Dream-v0-Instruct-7B --relay runs/dream-relay

The session forwards h between Dream's denoising steps (every step is one full-canvas forward, counted in
``session.nfe``); nothing else in Dream's loop changes. ``--relaykit`` decodes with ``relaykit.generate``
instead (blocks, threshold policy).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import relay_sft  # noqa: E402
from train import TINY_VOCAB, load  # noqa: E402

from relaykit import RelayModel  # noqa: E402

QUESTION = "Lily can run 12 kilometers per hour for 4 hours. How far does she run?"
TINY = dict(max_new_tokens=6, block_size=0, out=Path("runs/dream-relay"))


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = relay_sft.generate_args(__doc__)
    p.add_argument("--steps", type=int, default=None, help="Dream's diffusion steps (default: max_new_tokens)")
    p.add_argument("--alg", default="entropy", choices=["origin", "maskgit_plus", "topk_margin", "entropy"])
    p.add_argument("--relaykit", action="store_true", help="decode with relaykit.generate instead")
    args = relay_sft.finish_args(p, argv, tiny_defaults=TINY)
    model, tokenizer = load(args)
    if args.tiny:
        relay_sft.load_tiny_backbone(model, args.relay)
    relay = RelayModel.from_pretrained(model, args.relay)
    # --tiny: held-out prompts of the reverse task train.py --tiny learned, with their answers
    batches = relay_sft.prompts(args, tokenizer, relay.mask_token_id, tiny_vocab=TINY_VOCAB, default=QUESTION)
    if args.relaykit:
        return relay_sft.decode(relay, batches, args, tokenizer, block_size=args.block_size or None)
    steps = args.steps or args.max_new_tokens

    def run(prompt: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Dream's own sampler: (sequences, NFE per row)."""
        kw = dict(max_new_tokens=args.max_new_tokens, steps=steps, alg=args.alg)
        if args.no_relay:  # the bare backbone's loop: one forward per step
            with relay.disabled():
                return model.diffusion_generate(prompt, **kw), [steps] * prompt.shape[0]
        with relay.session() as session:  # Dream's own loop, unchanged; h forwarded between its steps
            out = model.diffusion_generate(prompt, **kw)
        return out, [session.nfe] * prompt.shape[0]

    return relay_sft.decode(relay, batches, args, tokenizer, run=run)


if __name__ == "__main__":
    main()
