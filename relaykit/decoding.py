"""generate(): the relay-aware denoising loop, full-sequence or by blocks, with or without a KV cache.

Legend: b batch, P prompt length, N new tokens, T = P + N canvas length, B block length, V vocabulary.

The loop is the backbone's own (LLaDA / Fast-dLLM style) plus one thing: h is forwarded from step to step. A
step runs the backbone (one NFE), aligns the logits with the tokens (token shift), lets the policy commit some
still-masked positions and writes their predictions into the canvas. Committed tokens are never re-masked.
Blocks are decoded left to right. With a block-causal backbone the relay state lives in the active block only (a
new block starts from h = 0) and committed blocks are cached once by a relay-free commit pass; with a
bidirectional one the state covers the canvas, as the backbone's own loop inside ``relay.session()`` would
have it (see relaykit.blockrun).

Never hangs: every policy commits at least one candidate per step, and the mask token is never predicted (its
logit is suppressed), so a block with m masked positions takes at most m steps.

Example::

    >>> res = relaykit.generate(relay, prompt, max_new_tokens=64, block_size=32, policy=Threshold(0.9))
    >>> res.sequences.shape, res.nfe                      # (b, P + 64), forward passes per sample
    >>> board = relaykit.generate(relay, puzzle, max_new_tokens=0, callback=check_legal)   # infill a canvas
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from relaykit.blockrun import Runner, runner_for
from relaykit.canvas import (
    Span,
    attention_segments,
    block_spans,
    build_canvas,
    cache_mode,
    canvas_maskable,
    canvas_padding,
    check_attention_given,
    check_cache_mode,
    decode_attention,
    sub_block_spans,
)
from relaykit.checks import check_state_covers, still_masked
from relaykit.generation import GenerationConfig, choose_tokens
from relaykit.hostread import read_step
from relaykit.kvcache import Attention, cache_batch_size, cache_length
from relaykit.model import RelayCore, unwrap_relay
from relaykit.policies import Policy, as_policy, commit_step, policy_violations, raise_policy_violation
from relaykit.rowdrop import check_row_dropping, step_rows
from relaykit.shift import check_first_unmasked, check_token_shift
from relaykit.state import RelayState

CacheMode = Literal["prefix", "dual", "sub_block"]
Callback = Callable[[int, Tensor], Any]


@dataclass
class PromptCache:
    """A backbone KV cache of committed, relay-free context that a later :func:`generate` call may reuse.

    ``tokens`` (b, L) are the tokens it holds; ``segments`` its attention segments; ``tail`` (b, V) the logits at
    its last position (they predict the next token when the backbone has a token shift).
    """

    cache: Any
    tokens: Tensor
    segments: tuple[Span, ...]
    tail: Tensor | None = None

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    def check(self, canvas: Tensor, canvas_start: int) -> None:
        """Raise unless this cache was built for the same batch and the same leading tokens as ``canvas``."""
        b, held = self.tokens.shape
        if canvas.shape[0] != b or (cache_batch_size(self.cache) not in (None, b)):
            raise ValueError(
                f"the cache passed to generate() holds {b} rows but input_ids has {canvas.shape[0]}: it comes from "
                f"another batch; pass the cache returned for these prompts (or cache=None)"
            )
        if cache_length(self.cache) != held:
            raise ValueError(
                f"stale cache: the backbone cache holds {cache_length(self.cache)} positions but it was recorded "
                f"with {held} tokens; it was modified after it was returned, build a new one"
            )
        if held > canvas_start:
            raise ValueError(
                f"the cache holds {held} positions but only {canvas_start} prompt positions are committed; a cache "
                f"may only cover the clean prompt"
            )
        differs = (self.tokens != canvas[:, :held].to(self.tokens.device)).any(0).nonzero().flatten()
        if differs.numel():
            raise ValueError(
                f"stale cache: it holds keys and values for tokens that differ from input_ids at positions "
                f"{differs[:8].tolist()}{' ...' if differs.numel() > 8 else ''}; pass cache=None to rebuild it"
            )


@dataclass
class GenerateResult:
    """What :func:`generate` returns.

    Attributes:
        sequences: (b, T) the prompt and the decoded tokens.
        nfe: (b,) backbone forward passes each sample needed: relay steps in which it still had masked positions
            in the active block, plus cache passes (prompt prefill, commit passes).
        steps: (b,) the relay steps alone.
        trajectory: with ``return_trajectory=True``, one (b, T) bool tensor per loop step: the positions
            committed at that step.
        cache: with ``return_cache=True`` and an exact block cache, a :class:`PromptCache` of the whole output.
    """

    sequences: Tensor
    nfe: Tensor
    steps: Tensor
    trajectory: list[Tensor] | None = None
    cache: PromptCache | None = None
    blocks: list[Span] = field(default_factory=list)

    @property
    def order(self) -> Tensor:
        """(b, T) the loop step at which each position was committed; -1 where it was given."""
        if self.trajectory is None:
            raise ValueError("order needs the trajectory: call generate(..., return_trajectory=True)")
        order = torch.full(self.sequences.shape, -1, dtype=torch.long, device=self.sequences.device)
        for k, committed in enumerate(self.trajectory):
            order[committed] = k
        return order


@torch.no_grad()
def generate(
    relay: RelayCore,
    input_ids: Tensor,
    *,
    max_new_tokens: int | None = None,
    block_size: int | None = None,
    policy: Policy | None = None,
    use_cache: bool | CacheMode | None = None,
    sub_block_size: int | None = None,
    maskable: Tensor | None = None,
    attention: Attention | None = None,
    state: RelayState | None = None,
    cache: PromptCache | None = None,
    return_trajectory: bool = False,
    return_cache: bool = False,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    generation_config: GenerationConfig | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    suppress_tokens: list[int] | None = None,
    attention_mask: Tensor | None = None,
    drop_finished_rows: bool = False,
) -> GenerateResult:
    """Decode ``input_ids`` (b, P) plus ``max_new_tokens`` masks with the relay forwarding h between steps.

    Args:
        relay: the attached model (:func:`relaykit.attach`).
        input_ids: (b, P) prompt, or with ``max_new_tokens=0`` a canvas that already holds mask tokens to infill
            (e.g. an 81-cell Sudoku board with the blanks masked).
        max_new_tokens: masks appended after the prompt (0: infill ``input_ids``).
        block_size: decode the canvas in blocks of this size, left to right (semi-autoregressive); must divide
            the canvas. None: the whole canvas is one block.
        policy: which masked positions a step commits (``relaykit.policies``); default ``Threshold(0.9)``.
        use_cache: False (recompute every step), True or "prefix" (block-level prefix cache; exact for
            block-causal backbones), "dual" (Fast-dLLM v1 dual cache) or "sub_block" (Fast-dLLM v2 block cache).
        sub_block_size: inside a block, commit sub-blocks of this size left to right (Fast-dLLM v2).
        maskable: (b, P) or (b, T) bool, positions the loop may fill (default: every masked position).
        attention: "bidirectional" or "block_causal"; default the adapter's ``attention``.
        state: initial relay state covering the canvas (block-causal: each block starts from its window);
            default h = 0.
        cache: a :class:`PromptCache` from an earlier call whose tokens start ``input_ids`` (skips their prefill).
        return_trajectory: keep the committed positions of every step (``result.trajectory`` / ``result.order``).
        return_cache: also store the last block and return the cache (exact block caches only).
        callback: ``callback(step, tokens (b, T))`` after every step, e.g. to check a board's legality.
        generator: random generator for sampling and random policies (reproducible runs).
        generation_config: a :class:`~relaykit.generation.GenerationConfig` holding these options; the keyword
            arguments given here override its fields.
        do_sample, temperature, top_k, top_p: draw each proposed token instead of taking the most probable one
            (field names and meaning as in transformers' GenerationConfig).
        eos_token_id: stop token id(s): a row whose decoded block holds one stops; its later blocks are filled with
            ``pad_token_id`` (default: the first EOS id) and cost it no forward pass.
        suppress_tokens: token ids never proposed.
        attention_mask: (b, P) 1 for prompt tokens, 0 for LEFT padding (prompts of different lengths in one
            batch): padding is never attended and never filled, so each row decodes as it would alone (with
            rotary / relative positions, as in Hugging Face decoders; positions count from the canvas start).
            Needs an adapter that builds its masks from ``DecodeCall`` (the Hugging Face convention).
        drop_finished_rows: feed only the rows that still have a blank to fill (no cache only;
            :mod:`relaykit.rowdrop`): same tokens and NFE, less work when rows finish at different steps (which
            rows are left is read with the step's one host read).
    """
    relay = unwrap_relay(relay, caller="generate()")
    config = (generation_config if generation_config is not None else GenerationConfig()).updated(
        max_new_tokens=max_new_tokens,
        block_size=block_size,
        sub_block_size=sub_block_size,
        policy=policy,
        use_cache=use_cache,
        attention=attention,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        suppress_tokens=suppress_tokens,
    )
    if config.max_new_tokens is None:
        raise ValueError("max_new_tokens is required: pass it, or a generation_config that sets it")
    max_new_tokens, block_size, sub_block_size = config.max_new_tokens, config.block_size, config.sub_block_size
    use_cache, attention = config.use_cache, config.attention  # type: ignore[assignment]
    policy = as_policy(config.policy)
    eos_ids = config.eos_ids
    mask_id = relay.mask_token_id
    x, canvas_start = build_canvas(relay, input_ids, max_new_tokens, block_size)
    b, total = x.shape
    maskable_t = canvas_maskable(maskable, b, input_ids.shape[1], total, x.device)
    padding = canvas_padding(relay, attention_mask, input_ids, total)  # (b, T) or None
    if padding is not None:
        maskable_t = maskable_t & ~padding
    mode = cache_mode(use_cache, block_size)
    attention = decode_attention(relay, check_attention_given(relay, attention))
    blocks = block_spans(canvas_start, total, block_size)
    check_cache_mode(relay, mode, attention, sub_block_size, block_size or total - canvas_start, return_cache)
    if drop_finished_rows:
        check_row_dropping(mode)
    shift = check_token_shift(relay.adapter.token_shift)
    candidates = still_masked(x, mask_id, maskable_t)  # (b, T)
    check_first_unmasked(candidates, shift, what="the canvas")
    if state is not None:
        hint = f"pass a state made for this canvas (RelayState.zeros(batch, {total}, hidden))"
        check_state_covers(state, b, total, what="the canvas", exact=True, hint=hint)
    segments = attention_segments(canvas_start, blocks, cache.segments if cache else (), cache.length if cache else 0)
    if cache is not None:
        if mode is None or attention != "block_causal":
            raise ValueError(
                "cache= is reused only with an exact block cache (use_cache='prefix' or 'sub_block', "
                "attention='block_causal')"
            )
        cache.check(x, canvas_start)
        if shift and cache.tail is None:
            raise ValueError(
                f"the backbone has a token shift of {shift}: the first token after a cache is predicted by the logits "
                f"at the cache's last position, so the PromptCache needs its tail (use the one returned by "
                f"generate(..., return_cache=True))"
            )
    runner: Runner = runner_for(mode, attention)(
        relay,
        attention=attention,
        segments=segments,
        batch=b,
        cache=None if cache is None else cache.cache,
        tail=None if cache is None else cache.tail,
        block_size=block_size or total - canvas_start,
    )
    runner.padding = padding
    nfe = torch.zeros(b, dtype=torch.long, device=x.device)
    steps = torch.zeros(b, dtype=torch.long, device=x.device)
    trajectory: list[Tensor] | None = [] if return_trajectory else None
    if not bool(candidates.any()) and not return_cache:  # nothing to fill: no pass at all
        return GenerateResult(x, nfe, steps, trajectory, None, blocks)
    nfe += runner.prepare(x, canvas_start)
    done = torch.zeros(b, dtype=torch.bool, device=x.device)  # rows stopped by an EOS in a decoded block
    stop: Tensor | None = None  # (1,) "has every row stopped?", read with the next block's first check
    halted = False
    eos = torch.tensor(eos_ids, dtype=x.dtype, device=x.device)
    fill = config.fill_id
    loop_step = 0
    carried = state  # bidirectional: one state over the canvas, carried across blocks
    for index, (s, e) in enumerate(blocks):
        last = index == len(blocks) - 1
        if attention == "block_causal":  # relay lives in the active block: it starts from h = 0 (or its window)
            window = None if state is None else state.window(s, e)
        else:
            window = carried
        runner.begin(x, (s, e))
        for a, c in sub_block_spans(s, e, sub_block_size):
            pending: Tensor | None = None  # (2,) the last commit's policy_violations, read with the next check
            while True:
                focus = torch.zeros_like(candidates)
                focus[:, a:c] = True
                masked = still_masked(x, mask_id, maskable_t)  # (b, T)
                todo = masked & focus  # (b, T)
                active = todo.any(-1)  # (b,)
                need = runner.host_flags(x, (s, e), (a, c))  # (k,) what the runner's step decides on, or None
                left = masked.any(-1) if drop_finished_rows else None  # (b,)
                # the step's one host read: go on?, has every row stopped (first step of a block after an EOS
                # check)?, did the last commit break a policy rule?, the runner's flags, and the rows left
                go, halted, broken, (flags, left) = read_step(active.any(), stop, pending, need, left)
                stop = None
                if halted:
                    break
                if broken:
                    raise_policy_violation(policy, *broken)
                if not go:
                    break
                if drop_finished_rows:  # only the rows with a blank anywhere (a row done with this block still
                    # gets h written at its later blanks), as read above
                    rows = torch.tensor([i for i, v in enumerate(left) if v], dtype=torch.long, device=x.device)
                    logits, window = step_rows(runner, x, (s, e), (a, c), window, rows)  # (b, B, V)
                else:
                    logits, window = runner.step(x, (s, e), (a, c), window, flags=flags)  # (b, B, V)
                scores = choose_tokens(logits, config, mask_token_id=mask_id, generator=generator)
                commit, prediction = commit_step(
                    policy,
                    logits,
                    x[:, s:e],
                    mask_token_id=mask_id,
                    maskable=todo[:, s:e],
                    generator=generator,
                    scores=scores,
                    check=False,
                )
                pending = policy_violations(commit, todo[:, s:e])
                x[:, s:e] = torch.where(commit, prediction.to(x.dtype), x[:, s:e])
                nfe += active
                steps += active
                if trajectory is not None:
                    committed = torch.zeros_like(candidates)
                    committed[:, s:e] = commit
                    trajectory.append(committed)
                if callback is not None:
                    callback(loop_step, x.clone())
                loop_step += 1
            if halted:
                break
        if halted:  # every row stopped at an EOS in an earlier block: this block holds pad tokens only
            break
        carried = window
        live = ~done  # rows that decoded this block pay for its commit pass
        nfe += runner.end(x, (s, e), last=last and not return_cache) * live
        if eos_ids and not last:
            stopped = done | (torch.isin(x[:, s:e], eos) & candidates[:, s:e]).any(-1)  # (b,)
            newly = stopped & ~done  # (b,) a stopped row's later blocks hold pad tokens: nothing left to decode
            x[:, e:].masked_fill_(newly.unsqueeze(-1), fill)  # arithmetic, no "any row newly stopped?" read
            done = stopped
            if not return_cache:
                stop = done.all().view(1)
    out_cache = None
    if return_cache:
        out_cache = PromptCache(runner.cache, x.clone(), segments, runner.tail)
    return GenerateResult(x, nfe, steps, trajectory, out_cache, blocks)
