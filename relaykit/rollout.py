"""bptt_rollout: K teacher-forced denoising steps on a batch, with gradients through h across the window.

Legend: b batch, n sequence length, m masked positions selected for the loss, V vocabulary, k steps.

One call is one truncated-BPTT window of Algorithm 1 (arXiv:2605.22967). For step 0..k-1: a relay forward on
the partially unmasked tokens z (h from the previous step), cross-entropy on the positions still masked, then an
unmasking choice U from the policy (not differentiated) and teacher forcing ``z[U] = x0[U]``. The loss is the sum
of the step losses; h is *not* detached between steps unless ``stop_gradient=True``. The paper's four training
methods are options of this one function (the persistent driver in :mod:`relaykit.driver` adds the carrying of
(z, h, x0) across optimiser steps):

==========  ==================================================================
MLM         ``k=1, init="random", relay_enabled=False`` (fresh samples each step)
Rollout     ``k=2, relay_enabled=False``
Relay (sg)  ``k=2, stop_gradient=True``
Relay       ``k=2`` (the default)
==========  ==================================================================

Example::

    res = relaykit.bptt_rollout(relay, x0, maskable=maskable, k=2, policy=Threshold(0.9))
    res.loss.backward()                      # gradients reach R through h_0 -> h_1
    res = relaykit.bptt_rollout(relay, x0, maskable=maskable, z=res.z, state=res.state)   # continue the rollout
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaykit.checks import check_state_covers, positive_int, still_masked
from relaykit.methods import INITS, InitKind
from relaykit.model import RelayCore, unwrap_relay
from relaykit.policies import Policy, as_policy, commit_step, random_per_row
from relaykit.shift import align_logits, check_first_unmasked, gather_aligned
from relaykit.state import RelayState

LossKind = Literal["mean", "llada"]
_LOSSES = ("mean", "llada")


@dataclass
class RolloutResult:
    """What one rollout window returns.

    Attributes:
        loss: scalar to backpropagate, the sum of ``step_losses``.
        step_losses: (k,) the loss of each step (attached to the graph).
        committed: (k, b) positions committed (teacher-forced) per step and row.
        masked: (k, b) masked maskable positions fed to each step (the positions that carry loss).
        correct: (k, b) committed positions whose argmax prediction equals x0.
        z: (b, n) tokens after the window.
        state: relay state after the window, detached (None when relay is disabled and none was given).
        finished: (b,) rows with no masked maskable position left (a driver replaces them).
        new_rows: (b,) rows that started a new sample this window (set by the persistent driver).
        sample_ids: (b,) index of the sample each row holds, in data order (set by the persistent driver).
    """

    loss: Tensor
    step_losses: Tensor
    committed: Tensor
    masked: Tensor
    correct: Tensor
    z: Tensor
    state: RelayState | None
    finished: Tensor
    new_rows: Tensor | None = None
    sample_ids: Tensor | None = None

    @property
    def k(self) -> int:
        """Number of denoising steps (forward passes) in the window."""
        return int(self.step_losses.shape[0])

    @property
    def commit_accuracy(self) -> float:
        """Fraction of committed positions whose prediction was right (nan when nothing was committed)."""
        total = int(self.committed.sum())
        return float(self.correct.sum()) / total if total else float("nan")

    def __repr__(self) -> str:
        losses = ", ".join(f"{v:.4g}" for v in self.step_losses.detach().float().tolist())
        return (
            f"RolloutResult(loss={float(self.loss.detach()):.4g}, step_losses=[{losses}], "
            f"committed={self.committed.sum(-1).tolist()}, finished={int(self.finished.sum())}/{self.z.shape[0]})"
        )


# ---------------------------------------------------------------------------------------------- helpers
def initial_z(
    x0: Tensor,
    maskable: Tensor,
    mask_token_id: int,
    *,
    init: InitKind = "full",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Tokens (b, n) at the start of a sample: x0 with its maskable positions masked.

    ``init="full"`` masks every maskable position (Algorithm 1's new sample). ``init="random"`` draws a mask
    ratio t ~ U(0, 1) per row and masks ceil(t * M) of the row's M maskable positions (at least one), chosen
    uniformly: the masked-LM (MLM) baseline's corruption.
    """
    if init == "full":
        return x0.masked_fill(maskable, mask_token_id)
    if init != "random":
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    total = maskable.sum(-1)  # (b,)
    t = torch.rand(total.shape, generator=generator, device=x0.device)  # (b,)
    count = torch.ceil(t * total).long().clamp(min=1)  # (b,)
    chosen = random_per_row(maskable, count, generator)  # (b, n)
    return x0.masked_fill(chosen, mask_token_id)


def _describe(t: Any) -> str:
    return f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__


def check_batch(
    relay: RelayCore,
    x0: Tensor,
    maskable: Tensor,
    *,
    z: Tensor | None = None,
    state: RelayState | None = None,
) -> None:
    """Raise a clear error for anything a rollout cannot train on (shapes, vocabulary, mask layout, state)."""
    if not isinstance(x0, Tensor) or x0.dim() != 2 or x0.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"x0 must be a (batch, length) tensor of integer token ids; got {_describe(x0)}")
    if not isinstance(maskable, Tensor) or maskable.dtype != torch.bool or maskable.shape != x0.shape:
        raise ValueError(
            f"maskable must be a bool tensor shaped like x0 {tuple(x0.shape)} (True where a token is to be "
            f"predicted); got {_describe(maskable)}"
        )
    if maskable.device != x0.device:
        raise ValueError(f"maskable is on {maskable.device} but x0 is on {x0.device}")
    empty = (~maskable.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"row(s) {empty} of the batch have no maskable position, so there is nothing to predict; every sample "
            f"needs at least one maskable position (drop such samples from the data)"
        )
    if x0.shape[0] == 0 or x0.shape[1] == 0:
        raise ValueError(f"x0 is empty (shape {tuple(x0.shape)}); a rollout needs at least one row and one position")
    vocab = relay.adapter.vocab_size(relay.backbone)
    lo, hi = int(x0.min()), int(x0.max())
    if lo < 0 or (vocab is not None and hi >= vocab):
        raise ValueError(
            f"x0 holds token ids {lo}..{hi} but the embedding has a vocabulary of {vocab} (ids 0..{vocab - 1}); "
            f"check the tokenizer / data against the model"
        )
    mask = relay.mask_token_id
    if bool(still_masked(x0, mask, maskable).any()):
        raise ValueError(
            f"x0 contains the mask token id {mask} at a maskable position; the ground truth must be a real token "
            f"there (teacher forcing would write a mask and the sample would never finish)"
        )
    check_first_unmasked(maskable, relay.adapter.token_shift, what="maskable")
    if z is not None:
        if not isinstance(z, Tensor) or z.shape != x0.shape:
            raise ValueError(f"z must have the shape of x0 {tuple(x0.shape)}; got {_describe(z)}")
        wrong = (z != x0) & ~still_masked(z, mask, maskable)
        if bool(wrong.any()):
            rows = wrong.any(-1).nonzero().flatten().tolist()
            raise ValueError(
                f"z disagrees with x0 in row(s) {rows}: every position must be either masked (where maskable) or "
                f"equal to x0; was z built for another batch?"
            )
    if state is not None:
        hint = "pass the state returned for this batch (RolloutResult.state) or state=None to start from h = 0"
        check_state_covers(state, x0.shape[0], x0.shape[1], what="this batch", exact=False, hint=hint)
        if z is None:
            raise ValueError(
                "a state was given without z; a state belongs to a partially unmasked batch: pass the z it was "
                "returned with (RolloutResult.z), or state=None for new samples"
            )


def _step_loss_terms(
    logits: Tensor, x0: Tensor, masked: Tensor, maskable: Tensor, *, loss: LossKind, token_shift: int
) -> tuple[Tensor, Tensor]:
    """(numerator, denominator) of one step's loss. Denominators stay separate so they can be all-reduced."""
    predicted = gather_aligned(logits, masked, token_shift)  # (m, V)
    predicted = predicted.to(torch.promote_types(predicted.dtype, torch.float32))  # CE in >= float32
    ce = F.cross_entropy(predicted, x0[masked], reduction="none")  # (m,)
    m_row = masked.sum(-1)  # (b,)
    if loss == "mean":
        return ce.sum(), m_row.sum().to(ce.dtype)
    # LLaDA: each masked token's CE / p_mask, summed, over the number of maskable positions. p_mask is the row's
    # masked fraction of its maskable positions (deterministic in a rollout; LLaDA's sampled t in expectation).
    big_m = maskable.sum(-1)  # (b,)
    rows = masked.nonzero(as_tuple=True)[0]  # (m,)
    weight = (big_m.to(ce.dtype) / m_row.clamp(min=1).to(ce.dtype))[rows]  # (m,) = 1 / p_mask
    active = m_row > 0
    return (ce * weight).sum(), big_m[active].sum().to(ce.dtype)


def _global(denominators: Tensor, sync: bool) -> tuple[Tensor, int]:
    """All-reduce the step denominators across processes when asked; returns them and the world size."""
    if not sync:
        return denominators, 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sync_counts=True needs an initialised torch.distributed process group")
    total = denominators.detach().clone()
    dist.all_reduce(total)
    return total, dist.get_world_size()


# ---------------------------------------------------------------------------------------------- the rollout
def bptt_rollout(
    relay: nn.Module,
    x0: Tensor,
    *,
    maskable: Tensor,
    k: int = 2,
    policy: Policy | None = None,
    stop_gradient: bool = False,
    state: RelayState | None = None,
    z: Tensor | None = None,
    relay_enabled: bool = True,
    loss: LossKind = "mean",
    init: InitKind = "full",
    generator: torch.Generator | None = None,
    sync_counts: bool = False,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> RolloutResult:
    """Run ``k`` teacher-forced denoising steps on a batch and return the summed loss and the rollout state.

    Args:
        relay: a RelayModel (or a DDP / FSDP / compile wrapper of one; calls go through the wrapper).
        x0: (b, n) ground-truth tokens.
        maskable: (b, n) bool, True where a token is to be predicted (False for prompts / givens / padding).
        k: number of denoising steps in the window (the paper's K; 2 by default).
        policy: unmasking policy (default ``Threshold(0.9)``); its choice is not differentiated.
        stop_gradient: detach h between steps (the paper's "Relay (sg)").
        state: relay state to continue from (None: h = 0). Needs the ``z`` it belongs to.
        z: (b, n) partially unmasked tokens to continue from; None starts new samples with ``init``.
        relay_enabled: False runs the bare backbone (the "Rollout" and "MLM" baselines); ``state`` passes through.
        loss: ``"mean"`` (CE averaged over the masked positions of the batch, per step) or ``"llada"`` (each
            token's CE weighted by 1 / p_mask, divided by the number of maskable positions, as LLaDA).
        init: how new samples are masked when ``z`` is None: ``"full"`` (all maskable) or ``"random"`` (MLM).
        generator: RNG for random policies and random masks.
        sync_counts: under torch.distributed, divide by the *global* number of masked tokens (all-reduced) and
            scale by the world size, so that DDP's gradient average equals single-process training on the global
            batch exactly. One all-reduce of k numbers per call.
        backbone_kwargs: extra keyword arguments for every backbone call (attention masks, ...). Block-diffusion
            adapters (``adapter.clean_layout(backbone)``: BD3-LM, Fast-dLLM v2) get ``clean_ids=x0`` added, so each
            step runs their ``[z ; x0]`` training layout with relay on ``z`` only.

    Example::

        >>> res = bptt_rollout(relay, x0, maskable=x0 != pad_id, k=2)      # doctest: +SKIP
        >>> res.loss.backward(); res.committed.shape                        # doctest: +SKIP
        torch.Size([2, 4])
    """
    core = unwrap_relay(relay)
    positive_int(k, name="k (denoising steps per window)")
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    policy = as_policy(policy)
    check_batch(core, x0, maskable, z=z, state=state)
    mask, shift = core.mask_token_id, core.adapter.token_shift
    kwargs = dict(backbone_kwargs or {})
    x0 = x0.long()
    if "clean_ids" not in kwargs and core.adapter.clean_layout(core.backbone):
        kwargs["clean_ids"] = x0  # block diffusion (BD3-LM, Fast-dLLM v2): train on [z ; x0], relay on z only
    z = initial_z(x0, maskable, mask, init=init, generator=generator) if z is None else z.long()
    if not bool(still_masked(z, mask, maskable).any()):
        raise ValueError(
            "nothing is masked in this batch (every row is fully unmasked), so there is nothing to train on; "
            "start new samples (z=None) or let relaykit.PersistentRollout replace finished rows"
        )

    numerators, denominators, committed, masked_counts, correct = [], [], [], [], []
    for step in range(k):
        masked = still_masked(z, mask, maskable)  # (b, n) positions that carry loss at this step
        if relay_enabled:
            out = relay(z, state=state, **kwargs)
            state = out.state
        else:
            with core.disabled():
                out = relay(z, **kwargs)
        logits = out.logits  # (b, n, V)
        if step == 0 and int(x0.max()) >= logits.shape[-1]:
            raise ValueError(f"x0 holds token id {int(x0.max())} but the model predicts {logits.shape[-1]} tokens")
        num, den = _step_loss_terms(logits, x0, masked, maskable, loss=loss, token_shift=shift)
        numerators.append(num)
        denominators.append(den)
        with torch.no_grad():  # the unmasking choice is not differentiated
            aligned = align_logits(logits.detach(), shift)  # (b, n, V)
            commit, prediction = commit_step(
                policy, aligned, z, mask_token_id=mask, maskable=maskable, generator=generator
            )
        committed.append(commit.sum(-1))
        masked_counts.append(masked.sum(-1))
        correct.append((commit & (prediction == x0)).sum(-1))
        z = torch.where(commit, x0, z)  # teacher forcing: ground truth at the committed positions
        if stop_gradient and state is not None:
            state = state.detach()
        del out, logits, aligned  # free this step's (b, n, V) logits before the next forward (peak memory)

    dens, world = _global(torch.stack(denominators), sync_counts)
    step_losses = torch.stack(numerators) / dens.clamp(min=1) * world  # (k,)
    return RolloutResult(
        loss=step_losses.sum(),
        step_losses=step_losses,
        committed=torch.stack(committed),
        masked=torch.stack(masked_counts),
        correct=torch.stack(correct),
        z=z,
        state=state.detach() if state is not None else None,
        finished=~still_masked(z, mask, maskable).any(-1),
    )
