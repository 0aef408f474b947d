"""Resolution of modules, widths and ids on a backbone: exact dotted paths, never name suffixes.

Everything here reads a model and answers one question (where is this module, how wide is this tensor, what mask
id does the config declare, which dtype and device do the parameters use). Adapters, ``attach`` and persistence
share these answers, so a width or a mask id is looked up the same way everywhere. No relaykit module is imported
here except the shared checks: this sits below the adapters and the model.

Example::

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    >>> resolve_module(model, "1", role="final_hidden")
    LayerNorm((4,), eps=1e-05, elementwise_affine=True)
    >>> embedding_width(model[0], path="0"), hidden_width(model[1], "output", path="1")
    (4, 4)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from relaykit.checks import is_int

Side = Literal["input", "output"]
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)


def resolve_module(model: nn.Module, path: str, *, role: str) -> nn.Module:
    """The submodule at exact dotted ``path`` (indices allowed: ``"layers.0.norm"``), never by suffix.

    Raises AttributeError listing the closest existing paths when it is missing.
    """
    if not isinstance(path, str) or not path:
        raise TypeError(f"{role} path must be a non-empty dotted string, got {path!r}")
    try:  # walks the dotted path (no scan of every module: generate resolves the embedding on each call)
        found = model.get_submodule(path)
    except AttributeError:
        found = None
    if isinstance(found, nn.Module):
        return found
    names = dict(model.named_modules())
    close = difflib.get_close_matches(path, [n for n in names if n], n=5, cutoff=0.4)
    hint = f" Closest paths: {', '.join(close)}." if close else ""
    raise AttributeError(f"{role}: no module at path {path!r} in {type(model).__name__}.{hint}")


def module_path(model: nn.Module, module: nn.Module) -> str:
    """The dotted path of ``module`` inside ``model`` ("" for the model itself)."""
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def candidates(model: nn.Module, kinds: tuple[type, ...]) -> list[str]:
    """Paths of submodules of the given kinds, to list in error messages."""
    return [n for n, m in model.named_modules() if isinstance(m, kinds) and n]


def _table(module: nn.Module) -> Tensor | None:
    """The [vocab, width] table of an embedding-like module (``weight`` or MDLM's raw ``embedding``)."""
    for name in ("weight", "embedding"):
        p = getattr(module, name, None)
        if isinstance(p, Tensor) and p.dim() == 2:
            return p
    return None


def embedding_width(module: nn.Module, *, path: str) -> int:
    """The output width e of an embedding module: nn.Embedding, or a module with a 2-D [vocab, e] weight."""
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    table = _table(module)
    if isinstance(module, (*_CONTAINERS, nn.Linear)) or table is None:
        raise TypeError(
            f"embedding {path!r} is a {type(module).__name__}; expected a token embedding (nn.Embedding, or a "
            f"module with a [vocab, width] parameter named 'weight' or 'embedding')"
        )
    return table.shape[1]


def embedding_vocab(module: nn.Module) -> int | None:
    """The number of rows of an embedding module's table (None when it has no readable table)."""
    if isinstance(module, nn.Embedding):
        return module.num_embeddings
    table = _table(module)
    return table.shape[0] if table is not None else None


def config_int(model: nn.Module, names: tuple[str, ...]) -> int | None:
    """The first of ``names`` that ``model.config`` holds as an int (bools do not count), else None."""
    config = getattr(model, "config", None)
    for name in names:
        value = getattr(config, name, None)
        if is_int(value):
            return value
    return None


def config_mask_id(model: nn.Module) -> int | None:
    """The mask id a model's config declares (``mask_token_id``, ``mask_id`` or ``mask_index``), if any."""
    return config_int(model, ("mask_token_id", "mask_id", "mask_index"))


def config_hidden_size(model: nn.Module) -> int | None:
    """The hidden width a model's config declares (``hidden_size``, ``d_model``, ``hidden_dim``, ``n_embd``)."""
    return config_int(model, ("hidden_size", "d_model", "hidden_dim", "n_embd"))


def hidden_width(module: nn.Module, side: Side, *, path: str, model: nn.Module | None = None) -> int:
    """The width d of the tensor seen at ``side`` of ``module`` (the final hidden state).

    Read from the module (Linear, LayerNorm / RMSNorm, a 1-D ``weight``), else from ``model.config``; a TypeError
    asking for ``hidden_size=...`` when neither tells.
    """
    if isinstance(module, _CONTAINERS):
        raise TypeError(
            f"final_hidden {path!r} is a {type(module).__name__} (a container); expected the module whose "
            f"{side} is the last hidden state, e.g. the final norm or the LM head with side 'input'"
        )
    if isinstance(module, nn.Linear):
        return module.in_features if side == "input" else module.out_features
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and module.normalized_shape:
        return int(module.normalized_shape[-1])
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 1:  # custom RMSNorm-like modules
        return weight.shape[0]
    if model is not None:
        size = config_hidden_size(model)
        if size is not None:
            return size
    raise TypeError(
        f"cannot tell the hidden width at the {side} of {path!r} ({type(module).__name__}); pass hidden_size=..."
    )


def readable_width(read: Callable[[], int]) -> int | None:
    """``read()``, or None when the width cannot be read (``read`` raises TypeError, see :func:`hidden_width`)."""
    try:
        return read()
    except TypeError:
        return None


def resolve_hidden_size(read: Callable[[], int], given: int | None) -> int:
    """The final hidden width: ``read()`` from the backbone, else ``given``; both known must agree."""
    if given is None:
        return read()  # its TypeError asks for hidden_size=...
    if not is_int(given) or given < 1:
        raise ValueError(f"hidden_size must be a positive int, got {given!r}")
    readable = readable_width(read)
    if readable is not None and readable != given:
        raise ValueError(f"hidden_size={given} but the backbone's final hidden state has width {readable}")
    return given


def resolve_mask_token_id(given: int | None, read: Callable[[], int], vocab: int | None) -> int:
    """The mask id (``given`` first, else ``read()``), checked against a vocabulary of ``vocab`` tokens."""
    mask = read() if given is None else given
    if not is_int(mask):
        raise TypeError(f"mask_token_id must be an int, got {type(mask).__name__}")
    if mask < 0 or (vocab is not None and mask >= vocab):
        valid = f"0..{vocab - 1}" if vocab is not None else ">= 0"
        raise ValueError(f"mask_token_id {mask} is outside the embedding's vocabulary of {vocab} tokens ({valid})")
    return mask


def float_dtype_device(module: nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    """The dtype and device of the first floating-point parameter of ``module`` ((None, None) when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return None, None
