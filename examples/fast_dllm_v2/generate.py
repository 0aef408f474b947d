"""Decode with Fast-dLLM v2's own generate() plus a trained relay: the loop is unchanged, relay forwards h.

    python examples/fast_dllm_v2/generate.py --tiny --relay runs/fdllm2-relay           # after train.py --tiny
    python examples/fast_dllm_v2/generate.py --model Efficient-Large-Model/Fast_dLLM_v2_1.5B \\
        --relay runs/fdllm2-relay --prompt "Write a haiku about caches." --block-cache

``generate()`` calls ``self.forward`` directly, so relay follows it through ``model.model`` inside
``relay.session()``: blocks of 32, sub-blocks of 8 (``--block-cache``: Fast-dLLM v2's sub-block cache), commit
passes relay-free. NFE = forward passes per prompt, commit passes included. transformers 4.53-4.57.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import relay_sft  # noqa: E402
from train import TINY_BLOCK, TINY_MASK, load  # noqa: E402

from relaykit import RelayModel  # noqa: E402

TINY = dict(max_new_tokens=8, block_size=TINY_BLOCK, out=Path("runs/fdllm2-relay"))
STOP = 151645  # <|im_end|>
QUESTION = "Give me a short introduction to large language models."


def decode(relay: RelayModel, model: torch.nn.Module, input_ids: torch.Tensor, args, mask_id: int, stop: int):
    """(sequences, NFE) of one ``model.generate`` call, inside a relay session unless ``--no-relay``."""
    kwargs = dict(
        max_new_tokens=args.max_new_tokens,
        mask_id=mask_id,
        threshold=args.threshold,
        small_block_size=max(args.block_size // 4, 1),
        block_size=args.block_size,
        stop_token=stop,
        use_block_cache=args.block_cache,
    )
    if args.no_relay:
        calls = []
        handle = model.model.register_forward_pre_hook(lambda m, a: calls.append(1))
        try:
            return model.generate(input_ids, **kwargs), len(calls)
        finally:
            handle.remove()
    with relay.session() as session:
        out = model.generate(input_ids, **kwargs)
        return out, session.nfe


def setup(argv, description):
    p = relay_sft.generate_args(description)
    p.add_argument("--block-cache", action="store_true", help="Fast-dLLM v2's sub-block cache (use_block_cache)")
    return p


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = relay_sft.finish_args(setup(argv, __doc__), argv, tiny_defaults=TINY)
    model, tokenizer, mask_id = load(args)
    if args.tiny:
        relay_sft.load_tiny_backbone(model, args.relay)
    relay = RelayModel.from_pretrained(model.eval(), args.relay)
    # --tiny: held-out prompts of the reverse task train.py --tiny learned (the twin never emits the stop id)
    stop = STOP if args.tiny else tokenizer.convert_tokens_to_ids("<|im_end|>")
    batches = relay_sft.prompts(args, tokenizer, mask_id, tiny_vocab=TINY_MASK + 1, default=QUESTION)
    items = [(p[i : i + 1], None if a is None else a[i : i + 1]) for p, a in batches for i in range(p.shape[0])]

    def run(prompt: torch.Tensor) -> tuple[torch.Tensor, list[int]]:  # one prompt at a time, as upstream
        out, calls = decode(relay, model, prompt, args, mask_id, stop)
        return out, [calls]

    return relay_sft.decode(relay, items, args, tokenizer, run=run)


if __name__ == "__main__":
    main()
