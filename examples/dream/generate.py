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
from train import load  # noqa: E402

from relaykit import RelayModel  # noqa: E402

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
    if args.tiny:  # toy prompts of the reverse task train.py --tiny learned
        x0, _ = next(relay_sft.reverse_task(64, relay.mask_token_id, batch=4, prompt=6, seed=args.seed + 1))
        batches = [(x0[:, :6], x0[:, 6:])]
    else:
        prompts = args.prompt or ["Lily can run 12 kilometers per hour for 4 hours. How far does she run?"]
        chats = [
            tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True) for q in prompts
        ]
        batches = [(torch.tensor([ids], device=args.device), None) for ids in chats]
    if args.relaykit:
        return relay_sft.decode(relay, batches, args, tokenizer, block_size=args.block_size or None)
    nfe, correct, total = [], 0, 0
    for prompt, answer in batches:
        steps = args.steps or args.max_new_tokens
        kw = dict(max_new_tokens=args.max_new_tokens, steps=steps, alg=args.alg)
        if args.no_relay:  # the bare backbone's loop: one forward per step
            with relay.disabled():
                out = model.diffusion_generate(prompt, **kw)
            nfe += [steps] * prompt.shape[0]
        else:
            with relay.session() as session:  # Dream's own loop, unchanged; h forwarded between its steps
                out = model.diffusion_generate(prompt, **kw)
            nfe += [session.nfe] * prompt.shape[0]
        new = out[:, prompt.shape[1] :]
        if answer is not None:
            correct += int((new == answer).all(-1).sum())
            total += answer.shape[0]
        else:
            for row in new:
                print(tokenizer.decode(row, skip_special_tokens=True))
    result = {"mean_nfe": sum(nfe) / len(nfe)}
    if total:
        result["exact_match"] = correct / total
    print(", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
