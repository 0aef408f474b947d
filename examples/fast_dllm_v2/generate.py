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
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import relay_sft  # noqa: E402
from train import TINY_BLOCK, TINY_PROMPT, load  # noqa: E402

from relaykit import RelayModel  # noqa: E402

TINY = dict(max_new_tokens=8, block_size=TINY_BLOCK, out=Path("runs/fdllm2-relay"))
STOP = 151645  # <|im_end|>


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
    if args.tiny:  # toy prompts of the reverse task train.py --tiny learned; the twin never emits the stop id
        x0, _ = next(relay_sft.reverse_task(64, mask_id, batch=4, prompt=TINY_PROMPT, seed=args.seed + 1))
        items = [(row[None, :TINY_PROMPT], row[None, TINY_PROMPT:]) for row in x0]
        stop = STOP
    else:
        prompts = args.prompt or ["Give me a short introduction to large language models."]
        stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
        items = []
        for q in prompts:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
            items.append((torch.tensor([ids], device=args.device), None))
    nfe, correct = [], 0
    for prompt, answer in tqdm(items, desc="decoding", unit="prompt"):
        out, calls = decode(relay, model, prompt, args, mask_id, stop)
        nfe.append(calls)
        new = out[0, prompt.shape[1] :]
        if answer is not None:
            correct += int(torch.equal(new[: answer.shape[1]], answer[0]))
        else:
            print(tokenizer.decode(new, skip_special_tokens=True))
    result = {"mean_nfe": sum(nfe) / len(nfe)}
    if args.tiny:
        result["exact_match"] = correct / len(items)
    print(", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
