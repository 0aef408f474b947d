"""How a backbone attends when it is called without an attention mask: read from the model, not assumed.

Hugging Face decoders (``*ForCausalLM``) attend causally unless told otherwise: transformers 5.x honours
``config.is_causal = False`` (a bidirectional model, e.g. a LLaDA-like Llama); 4.x builds a causal mask whatever
the config says, and its attention modules carry ``is_causal = True``. Masked diffusion backbones written for it
(LLaDA, Dream, MDLM) attend bidirectionally. ``relaykit.inspect`` reports this kind and ``relaykit.generate``
refuses to guess on a causal model (it needs ``attention=``, and then passes the 4D masks that give it).

Example::

    >>> native_attention(Qwen2ForCausalLM(config))          # "causal"
    >>> native_attention(LlamaForCausalLM(config_with_is_causal_false))   # "bidirectional" on transformers 5.x
"""

from __future__ import annotations

import sys
from typing import Literal

from torch import nn

NativeAttention = Literal["causal", "bidirectional"]


def _transformers_major() -> int | None:
    """The major version of the transformers already imported (None when it is not: the core never imports it)."""
    version = getattr(sys.modules.get("transformers"), "__version__", None)
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def native_attention(model: nn.Module) -> NativeAttention | None:
    """``"causal"`` or ``"bidirectional"``: how ``model`` attends without a mask; None when it cannot tell.

    Read from ``config.is_causal`` where the installed transformers honours it (5.x), else from the ``is_causal``
    flag of its attention modules (any True: causal), else from ``config.is_causal`` alone.
    """
    flag = getattr(getattr(model, "config", None), "is_causal", None)
    major = _transformers_major()
    if flag is False and (major is None or major >= 5):
        return "bidirectional"
    flags = [m.is_causal for m in model.modules() if m is not model and isinstance(getattr(m, "is_causal", None), bool)]
    if flags:
        return "causal" if any(flags) else "bidirectional"
    if isinstance(flag, bool):
        return "causal" if flag else "bidirectional"
    return None
