"""Decode with LLaDA plus a trained relay: semi-autoregressive blocks, confidence threshold, Fast-dLLM v1 caches.

    python examples/llada/generate.py --tiny --relay runs/llada-relay                 # after train.py --tiny
    python examples/llada/generate.py --model GSAI-ML/LLaDA-8B-Instruct --relay runs/llada-relay \\
        --prompt "What is 7 * 8?" --cache dual

``--cache prefix|dual`` needs Fast-dLLM v1's copy of ``modeling_llada.py`` (NVlabs/Fast-dLLM ``v1/llada/model``:
the hub file refuses a cache); ``none`` works with the hub file. transformers 4.38-4.57. Your own Fast-dLLM v1
loop works unchanged too: call it inside ``with relay.session() as s:`` and read ``s.nfe``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import relay_sft  # noqa: E402
from train import TINY_VOCAB, load  # noqa: E402

from relaykit import RelayModel  # noqa: E402

QUESTION = "Lily can run 12 kilometers per hour for 4 hours. How far does she run?"
TINY = dict(max_new_tokens=8, block_size=4, out=Path("runs/llada-relay"))  # the 6-token answer in blocks of 4


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = relay_sft.generate_args(__doc__)
    p.add_argument("--cache", default="dual", choices=["none", "prefix", "dual"], help="Fast-dLLM v1 cache mode")
    args = relay_sft.finish_args(p, argv, tiny_defaults=TINY)
    model, tokenizer = load(args)
    if args.tiny:
        relay_sft.load_tiny_backbone(model, args.relay)
    relay = RelayModel.from_pretrained(model, args.relay)
    # --tiny: held-out prompts of the reverse task train.py --tiny learned, with their answers
    batches = relay_sft.prompts(args, tokenizer, relay.mask_token_id, tiny_vocab=TINY_VOCAB, default=QUESTION)
    use_cache = False if args.cache == "none" else args.cache
    return relay_sft.decode(relay, batches, args, tokenizer, block_size=args.block_size, use_cache=use_cache)


if __name__ == "__main__":
    main()
