"""Relay SFT plumbing shared by the family examples (examples/llada, examples/mdlm, examples/fast_dllm_v2,
examples/dream).

Each family's ``train.py`` loads its model (a checkpoint path / hub id, or with ``--tiny`` the family's twin: a small
random re-implementation with the family's module tree from ``relaykit.testing.twins``, shipped in the wheel, no
download), attaches relay, and calls :func:`train`: Algorithm 1's persistent truncated-BPTT driver (K = 2) on
(x0, maskable) pairs where only the response is maskable, AdamW on the backbone and the relay channel (the channel
alone with ``--relay-only``), a progress bar, then ``relay.save_pretrained(out)``, which saves the trained
backbone's weights beside the channel (not with ``--relay-only``), so ``generate.py``'s
``RelayModel.from_pretrained(model, out)`` restores the model as trained. In ``--tiny`` mode the random backbone is
saved too (``tiny_backbone.pt``) so that ``generate.py --tiny`` rebuilds the same twin before loading.

Data: ``--data file.jsonl`` with one ``{"prompt": ..., "response": ...}`` per line (tokenised with the model's
tokenizer, its chat template when it has one), or with ``--tiny`` a toy task: reverse the prompt's tokens
(:func:`sft_data` picks one). ``generate.py`` decodes :func:`prompts` (the user's ``--prompt`` texts, or the toy
task's held-out prompts with their answers) with :func:`decode`: ``relaykit.generate`` by default, or the
family's own sampler passed as ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import relaykit
from relaykit import PersistentRollout, Threshold

TINY_BACKBONE = "tiny_backbone.pt"


def check_transformers(low: str, high: str, family: str) -> None:
    """Warn when the installed transformers is outside the range the family's remote code runs on."""
    import transformers

    version = tuple(int(p) for p in transformers.__version__.split(".")[:2])
    lo, hi = (tuple(int(p) for p in v.split(".")[:2]) for v in (low, high))
    if not lo <= version <= hi:
        warnings.warn(
            f"{family}'s remote modeling code runs on transformers {low}-{high}; found {transformers.__version__} "
            f"(pip install 'transformers>={low},<={high}.99')",
            stacklevel=2,
        )


def from_hub(
    args: Any, auto_class: str, *, dtype: torch.dtype | None = torch.bfloat16, tokenizer: str | None = None
) -> tuple[nn.Module, Any]:
    """(model on ``args.device``, tokenizer): ``transformers.<auto_class>.from_pretrained(args.model)`` with the
    family's remote code, and the tokenizer of ``tokenizer`` (default: the model's own)."""
    import transformers

    kwargs: dict[str, Any] = {"trust_remote_code": True} | ({} if dtype is None else {"torch_dtype": dtype})
    model = getattr(transformers, auto_class).from_pretrained(args.model, **kwargs)
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer or args.model, trust_remote_code=tokenizer is None)
    return model.to(args.device), tok


def common_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random twin of the model, offline, CPU, seconds")
    p.add_argument("--model", help="checkpoint path or hub id (needs trust_remote_code)")
    p.add_argument("--out", type=Path, default=Path("runs/relay"), help="relay folder (save_pretrained)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def train_args(description: str) -> argparse.ArgumentParser:
    p = common_args(description)
    p.add_argument("--data", type=Path, help='JSONL of {"prompt": ..., "response": ...} (not needed with --tiny)')
    p.add_argument("--steps", type=int, default=200, help="optimiser steps (the paper: 200 for Fast-dLLM v2)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512, help="prompt + response tokens, padded or cut")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--method", default="relay", choices=sorted(relaykit.METHODS))
    p.add_argument("--threshold", type=float, default=0.9, help="unmasking policy of the training rollout")
    p.add_argument("--relay-only", action="store_true", help="freeze the backbone, train the relay channel alone")
    return p


def generate_args(description: str) -> argparse.ArgumentParser:
    p = common_args(description)
    p.add_argument("--relay", type=Path, help="relay folder written by train.py (default: --out)")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several); tiny mode: toy prompts")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--threshold", type=float, default=0.9, help="commit masked positions with p >= threshold")
    p.add_argument("--no-relay", action="store_true", help="decode with the bare backbone (relay disabled)")
    return p


def finish_args(p: argparse.ArgumentParser, argv: list[str] | None, *, tiny_defaults: dict[str, Any]) -> Any:
    """Parse; with --tiny, options the user did not set take small CPU defaults."""
    args = p.parse_args(argv)
    if not args.tiny and not args.model:
        p.error("give --model PATH_OR_HUB_ID, or --tiny for an offline tiny run")
    if not args.tiny and getattr(args, "data", "unset") is None:
        p.error('give --data FILE.jsonl with one {"prompt": ..., "response": ...} per line')
    if args.tiny:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
        for name, value in tiny_defaults.items():
            if f"--{name.replace('_', '-')}" not in given:
                setattr(args, name, value)
        args.device = "cpu"
        torch.set_num_threads(1)
    if getattr(args, "relay", "unset") is None:
        args.relay = args.out
    torch.manual_seed(args.seed)
    return args


# ------------------------------------------------------------------------------------------------ data
TINY_PROMPT = 6  # the toy task's prompt (and answer) length


def reverse_task(
    vocab: int, mask_id: int, *, batch: int, prompt: int, seed: int, first: int = 1
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless toy SFT batches: x0 = [prompt ; reversed prompt], maskable = the response half."""
    g = torch.Generator().manual_seed(seed)
    maskable = torch.arange(2 * prompt) >= prompt  # (n,)
    while True:
        p = torch.randint(first, mask_id, (batch, prompt), generator=g)  # never the mask token
        yield torch.cat([p, p.flip(-1)], dim=1), maskable.expand(batch, -1)


def sft_pairs(path: Path, tokenizer: Any, *, max_length: int, batch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches from a JSONL file: prompt (chat template when available) + response + EOS padding (LLaDA's SFT
    recipe: the padding is part of the response, so the model learns where to stop)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no examples; expected one JSON object per line with 'prompt' and 'response'")
    eos = tokenizer.eos_token_id
    x0s, masks = [], []
    for row in rows:
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": row["prompt"]}]
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        else:
            prompt = tokenizer(row["prompt"])["input_ids"]
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [eos]
        ids = (prompt + response)[:max_length]
        ids += [eos] * (max_length - len(ids))
        x0s.append(torch.tensor(ids))
        masks.append(torch.arange(max_length) >= len(prompt))
    x0, maskable = torch.stack(x0s), torch.stack(masks)
    for start in itertools.cycle(range(0, len(rows), batch)):
        yield x0[start : start + batch], maskable[start : start + batch]


def sft_data(args: Any, tokenizer: Any, mask_id: int, *, tiny_vocab: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Training batches: the toy reverse task over ids below ``mask_id`` with ``--tiny`` (a twin of vocabulary
    ``tiny_vocab``), else ``--data`` tokenised by ``tokenizer``."""
    if args.tiny:
        return reverse_task(tiny_vocab, mask_id, batch=args.batch_size, prompt=TINY_PROMPT, seed=args.seed)
    return sft_pairs(args.data, tokenizer, max_length=args.max_length, batch=args.batch_size)


def prompts(
    args: Any, tokenizer: Any, mask_id: int, *, tiny_vocab: int, default: str | None
) -> list[tuple[Tensor, Tensor | None]]:
    """(prompt (1 or b, P), expected answer or None) pairs to decode: with ``--tiny`` four held-out prompts of the
    toy task (one batch) with their answers, else each ``--prompt`` (or ``default``), with the chat template when
    the tokenizer has one."""
    if args.tiny:
        x0, _ = next(reverse_task(tiny_vocab, mask_id, batch=4, prompt=TINY_PROMPT, seed=args.seed + 1))
        return [(x0[:, :TINY_PROMPT], x0[:, TINY_PROMPT:])]
    out: list[tuple[Tensor, Tensor | None]] = []
    for text in args.prompt or [default]:
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": text}]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        else:
            ids = tokenizer(text)["input_ids"]
        out.append((torch.tensor([ids], device=args.device), None))
    return out


class CharTokenizer:
    """A toy character tokenizer for the tiny twins (ids 0..vocab-2; anything unknown maps to id 0)."""

    def __init__(self, vocab: int) -> None:
        chars = " \n\t()[]:,.=+-*/<>_'\"#" + "abcdefghijklmnopqrstuvwxyz0123456789"
        self.chars = chars[: vocab - 2]
        self.index = {c: i + 1 for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, 0) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] if 0 < i <= len(self.chars) else "?" for i in ids)


# ------------------------------------------------------------------------------------------------ training
def train(
    relay: relaykit.RelayModel,
    data: Iterator[tuple[Tensor, Tensor]],
    args: Any,
    *,
    backbone_kwargs: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Persistent relay training (Algorithm 1); saves the relay to ``args.out``. Returns the loss per step."""
    model = relay.backbone
    model.requires_grad_(not args.relay_only)  # the paper fine-tunes backbone and channel together
    relay.channel.requires_grad_(True)
    params = [p for p in relay.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    driver = PersistentRollout(
        relay,
        data,
        batch_size=args.batch_size,
        method=args.method,
        policy=Threshold(args.threshold),
        seed=args.seed,
        backbone_kwargs=backbone_kwargs,
    )
    losses: list[float] = []
    bar = tqdm(range(args.steps), desc=f"relay SFT ({args.method})", unit="step")
    for step in bar:
        res = driver.step()  # K teacher-forced steps; gradients through h; finished rows take new samples
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(res.loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", done=driver.completed)
        if on_step is not None:
            on_step(step, losses[-1])
    changed = len(relay.changed_backbone_tensors())
    relay.save_pretrained(args.out)  # the channel, and the backbone's weights since training changed them
    if args.tiny:
        backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("relay_channel.")}
        torch.save(backbone, args.out / TINY_BACKBONE)
    head, tail = sum(losses[:5]) / len(losses[:5]), sum(losses[-5:]) / len(losses[-5:])
    what = f"the relay and the trained backbone ({changed} tensors changed)" if changed else "the relay"
    print(f"saved {what} to {args.out} (mean loss of the first / last 5 steps: {head:.3f} / {tail:.3f})")
    return losses


def decode(
    relay: relaykit.RelayModel,
    batches: list[tuple[Tensor, Tensor | None]],
    args: Any,
    tokenizer: Any = None,
    *,
    run: Callable[[Tensor], tuple[Tensor, list[int]]] | None = None,
    **generate_kwargs: Any,
) -> dict[str, float]:
    """Decode (prompt, expected answer or None) batches; print the texts (or the toy task's exact-match rate) and
    the mean NFE. ``run(prompt) -> (sequences, NFE per row)`` is the family's own sampler; by default
    ``relaykit.generate`` with a threshold policy and ``generate_kwargs`` (relay disabled with ``--no-relay``)."""

    def generate(prompt: Tensor) -> tuple[Tensor, list[int]]:
        with relay.disabled() if args.no_relay else contextlib.nullcontext():
            out = relaykit.generate(
                relay, prompt, max_new_tokens=args.max_new_tokens, policy=Threshold(args.threshold), **generate_kwargs
            )
        return out.sequences, out.nfe.tolist()

    nfe, correct, total = [], 0, 0
    for prompt, answer in tqdm(batches, desc="decoding", unit="batch"):
        sequences, calls = (run or generate)(prompt)
        nfe += calls
        new = sequences[:, prompt.shape[1] :]
        if answer is not None:
            if new.shape[1] >= answer.shape[1]:  # a sampler that stopped early got the answer wrong
                correct += int((new[:, : answer.shape[1]] == answer).all(-1).sum())
            total += answer.shape[0]
        else:
            for row in new:
                print(tokenizer.decode(row, skip_special_tokens=True))
    result = {"mean_nfe": sum(nfe) / len(nfe)}
    if total:
        result["exact_match"] = correct / total
    print(", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result


def load_tiny_backbone(model: nn.Module, out: Path) -> nn.Module:
    """The tiny backbone ``train.py --tiny`` saved next to the relay (random weights are per run)."""
    path = out / TINY_BACKBONE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run train.py --tiny --out {out} first")
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()
