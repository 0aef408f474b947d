"""relaykit: Learned Relay Representations for masked diffusion language models.

Relay carries each position's last-layer hidden state h to the next denoising step through a learned channel R:
``h_{k+1} = f(Emb(z_k) + R(h_k))``. Attach it to an existing MDM, train it with truncated BPTT, decode with
the model's own loop.

Example::

    import relaykit
    relay = relaykit.attach(model, embedding="tok", final_hidden="norm", mask_token_id=3)
    out = relay(input_ids)                      # out.logits, out.state
    out = relay(next_ids, state=out.state)      # h forwarded
"""

from __future__ import annotations

from relaykit._version import __version__
from relaykit.adapter import Adapter
from relaykit.attach import attach
from relaykit.channel import ChannelConfig, RelayChannel
from relaykit.decoding import GenerateResult, PromptCache, generate
from relaykit.generation import GenerationConfig
from relaykit.inspect import inspect
from relaykit.model import RelayOutput, RelaySession
from relaykit.relay import RelayModel
from relaykit.state import RelayState

__all__ = [
    "Adapter",
    "ChannelConfig",
    "GenerateResult",
    "GenerationConfig",
    "PromptCache",
    "RelayChannel",
    "RelayModel",
    "RelayOutput",
    "RelaySession",
    "RelayState",
    "__version__",
    "attach",
    "generate",
    "inspect",
]

# training: truncated-BPTT rollouts, the persistent driver (Algorithm 1), unmasking policies
from relaykit.driver import METHODS, DataExhausted, PersistentRollout  # noqa: E402
from relaykit.policies import Oracle, Policy, RandomK, Threshold, TopK, commit_step  # noqa: E402
from relaykit.rollout import RolloutResult, bptt_rollout  # noqa: E402

__all__ += [
    "METHODS",
    "DataExhausted",
    "Oracle",
    "PersistentRollout",
    "Policy",
    "RandomK",
    "RolloutResult",
    "Threshold",
    "TopK",
    "bptt_rollout",
    "commit_step",
]
