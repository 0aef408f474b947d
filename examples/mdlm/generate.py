"""Sample from MDLM plus a trained relay with relaykit's decoding loop (full sequence or blocks, no cache).

    python examples/mdlm/generate.py --tiny --relay runs/mdlm-relay                     # after train.py --tiny
    python examples/mdlm/generate.py --model kuleshov-group/mdlm-owt --relay runs/mdlm-relay --prompt "The"

Your own MDLM sampler works too: run it inside ``with relay.session():``. Its ``ddpm_cache`` shortcut reuses the
last p(x0) when no token changed, which relay makes stale (h moves even when tokens do not): gate it with
``relaykit.adapters.ddpm_cache_valid(x, x_next, time_conditioning=..., relay=relay)``, False while relay is on.
BD3-LM: run its own semi-autoregressive sampler (KV cache included) inside ``relay.session()``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import relay_sft  # noqa: E402
from train import TINY_VOCAB, load  # noqa: E402

from relaykit import RelayModel  # noqa: E402

TINY = dict(max_new_tokens=6, block_size=0, out=Path("runs/mdlm-relay"))


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = relay_sft.finish_args(relay_sft.generate_args(__doc__), argv, tiny_defaults=TINY)
    model, tokenizer = load(args)
    if args.tiny:
        relay_sft.load_tiny_backbone(model, args.relay)
    relay = RelayModel.from_pretrained(model, args.relay)
    # --tiny: held-out prompts of the reverse task train.py --tiny learned, with their answers
    default = None if args.tiny else tokenizer.bos_token  # unconditional: GPT-2's <|endoftext|>
    batches = relay_sft.prompts(args, tokenizer, relay.mask_token_id, tiny_vocab=TINY_VOCAB, default=default)
    return relay_sft.decode(relay, batches, args, tokenizer, block_size=args.block_size or None)


if __name__ == "__main__":
    main()
