"""Relay SFT for Fast-dLLM v2: the paper's recipe (K = 2 truncated BPTT, relay on the noisy half of [z ; x0]).

    python examples/fast_dllm_v2/train.py --tiny --out runs/fdllm2-relay                # offline, CPU, seconds
    python examples/fast_dllm_v2/train.py --model Efficient-Large-Model/Fast_dLLM_v2_1.5B --data sft.jsonl \\
        --out runs/fdllm2-relay --steps 200

Real use needs transformers 4.53-4.57 (the remote ``modeling.py`` does not build on 5.x) and CUDA: its training
forward compiles flex attention. Each rollout step runs the model's training layout [z ; x0] (2L columns, the
block-diffusion mask) with relay on z only; ``bptt_rollout`` passes ``clean_ids=x0`` for this family by itself.
The first token is never masked (token shift: position i-1 predicts token i).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import relay_sft  # noqa: E402

import relaykit  # noqa: E402

TINY = dict(steps=30, batch_size=8, lr=3e-3, out=Path("runs/fdllm2-relay"))
TINY_MASK, TINY_BLOCK = 63, 4


def load(args) -> tuple[torch.nn.Module, object, int]:
    """(model, tokenizer or None, mask id): the tiny twin, or Fast-dLLM v2 from a path / hub id."""
    if args.tiny:
        from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2

        model = tiny_fast_dllm_v2(bd_size=TINY_BLOCK, seed=args.seed)
        # a random twin may rank the mask token first, and upstream generate() would then loop forever
        model.lm_head.register_forward_hook(lambda m, a, out: out.index_fill(-1, torch.tensor([TINY_MASK]), -1e4))
        return model, None, TINY_MASK
    relay_sft.check_transformers("4.53", "4.57", "Fast-dLLM v2")
    model, tokenizer = relay_sft.from_hub(args, "AutoModelForCausalLM")  # bfloat16, trust_remote_code
    return model, tokenizer, tokenizer.convert_tokens_to_ids("|<MASK>|")


def main(argv: list[str] | None = None) -> list[float]:
    args = relay_sft.finish_args(relay_sft.train_args(__doc__), argv, tiny_defaults=TINY)
    model, tokenizer, mask_id = load(args)
    relay = relaykit.attach(model, mask_token_id=mask_id)  # picks the "fast_dllm_v2" adapter
    model.train()  # the [z ; x0] training layout is the model's train-mode path
    # --tiny: prompt 6 + response 6 in blocks of 4 (a prompt of exactly one block is ignored upstream)
    data = relay_sft.sft_data(args, tokenizer, mask_id, tiny_vocab=TINY_MASK + 1)
    return relay_sft.train(relay, data, args)


if __name__ == "__main__":
    main()
