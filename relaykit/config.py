"""RelayConfig: the typed, validated content of ``relay_config.json`` (what ``relay.config`` returns).

Every field is checked when a config is built or read back, and every error names the field, the type or values
expected and the value found, so a hand-edited or truncated file is reported as such rather than failing deep
inside the library.

Example::

    >>> from relaykit.channel import ChannelConfig
    >>> cfg = RelayConfig(adapter={"name": "generic"}, channel=ChannelConfig(hidden_size=16), mask_token_id=31)
    >>> RelayConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> RelayConfig.from_dict({**cfg.to_dict(), "format_version": "1"})
    Traceback (most recent call last):
    ...
    ValueError: relay config: field 'format_version' expected an int in 1..2, got str '1'
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from relaykit._version import __version__
from relaykit.channel import ChannelConfig

#: 1: channel only; 2: adds backbone weights (``backbone_weights``), ``vocab_size`` and the list of saved ``files``
FORMAT_VERSION = 2
UpdateRule = Literal["masked", "all"]
_UPDATES = ("masked", "all")
EmptyRule = Literal["skip", "zero"]
_EMPTIES = ("skip", "zero")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class RelayConfig:
    """How a relay was attached and what its checkpoint folder holds (``relay_config.json``).

    Attributes:
        adapter: the backbone adapter: ``{"name": <registered name>, **options}`` (e.g. the generic adapter's
            module paths), as ``Adapter.to_config()`` writes it.
        channel: the channel's shape and design (:class:`~relaykit.channel.ChannelConfig`).
        mask_token_id: the token id that marks a masked position; relay writes h where the input holds it.
        update: ``"masked"`` (write h only at still-masked positions; the default, required with KV caches) or
            ``"all"`` (every fed position; cache-free use).
        empty: ``"skip"`` (no relay term where no state exists; the default) or ``"zero"`` (R(0) there,
            Algorithm 1's h_0 = 0; cache-free use).
        backbone: the backbone's ``config._name_or_path`` (or class name) when the relay was saved.
        vocab_size: the backbone embedding's vocabulary when saved (None when unknown).
        backbone_weights: the file holding the backbone's weights in this folder (``model.safetensors`` or, sharded,
            ``model.safetensors.index.json``); None when only the channel was saved.
        format_version: the folder layout version (this relaykit writes :data:`FORMAT_VERSION`).
        relaykit_version: the relaykit version that wrote the folder.
        weights_sha256: SHA-256 of ``relay_model.safetensors`` (a file copied in from another save is caught).
        files: every file the save wrote (a later save replaces these and keeps anything else in the folder).
    """

    adapter: dict[str, Any]
    channel: ChannelConfig
    mask_token_id: int
    update: UpdateRule = "masked"
    empty: EmptyRule = "skip"
    backbone: str = ""
    vocab_size: int | None = None
    backbone_weights: str | None = None
    format_version: int = FORMAT_VERSION
    relaykit_version: str = __version__
    weights_sha256: str | None = None
    files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "relay config") -> None:
        """Raise ValueError naming the field, what was expected and what came, for the first bad field."""

        def bad(name: str, expected: str, value: Any) -> ValueError:
            return ValueError(f"{source}: field {name!r} expected {expected}, got {_describe(value)}")

        if not _is_int(self.format_version) or not 1 <= self.format_version <= FORMAT_VERSION:
            if _is_int(self.format_version) and self.format_version > FORMAT_VERSION:
                raise ValueError(
                    f"{source}: field 'format_version' is {self.format_version} but this relaykit ({__version__}) "
                    f"reads formats 1..{FORMAT_VERSION}; upgrade relaykit"
                )
            raise bad("format_version", f"an int in 1..{FORMAT_VERSION}", self.format_version)
        if not isinstance(self.adapter, dict) or not isinstance(self.adapter.get("name"), str):
            raise bad("adapter", 'an object with a string \'name\' (e.g. {"name": "generic"})', self.adapter)
        if not isinstance(self.channel, ChannelConfig):
            raise bad("channel", "a ChannelConfig", self.channel)
        if not _is_int(self.mask_token_id) or self.mask_token_id < 0:
            raise bad("mask_token_id", "an int >= 0", self.mask_token_id)
        if self.update not in _UPDATES:
            raise bad("update", f"one of {_UPDATES}", self.update)
        if self.empty not in _EMPTIES:
            raise bad("empty", f"one of {_EMPTIES}", self.empty)
        if not isinstance(self.backbone, str):
            raise bad("backbone", "a string", self.backbone)
        if self.vocab_size is not None and (not _is_int(self.vocab_size) or self.vocab_size < 1):
            raise bad("vocab_size", "an int >= 1 or null", self.vocab_size)
        if self.vocab_size is not None and self.mask_token_id >= self.vocab_size:
            raise ValueError(
                f"{source}: field 'mask_token_id' is {self.mask_token_id}, outside the saved vocabulary of "
                f"{self.vocab_size} tokens (0..{self.vocab_size - 1})"
            )
        if self.backbone_weights is not None and not isinstance(self.backbone_weights, str):
            raise bad("backbone_weights", "a file name or null", self.backbone_weights)
        if not isinstance(self.relaykit_version, str):
            raise bad("relaykit_version", "a string", self.relaykit_version)
        if self.weights_sha256 is not None and not (
            isinstance(self.weights_sha256, str) and len(self.weights_sha256) == 64
        ):
            raise bad("weights_sha256", "a 64-character hex string or null", self.weights_sha256)
        if not isinstance(self.files, list) or not all(isinstance(f, str) for f in self.files):
            raise bad("files", "a list of file names", self.files)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict written to ``relay_config.json`` (the channel as a nested object)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["channel"] = self.channel.to_dict()
        out["adapter"] = dict(self.adapter)
        out["files"] = list(self.files)
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "relay config") -> RelayConfig:
        """Build and validate a config read from JSON; unknown keys are warned about, missing ones are an error."""
        if not isinstance(data, dict):
            raise ValueError(f"{source} must hold a JSON object with the relay settings, got {_describe(data)}")
        names = {f.name for f in fields(cls)}
        required = ("format_version", "adapter", "channel", "mask_token_id")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"{source} lacks required field(s) {missing}")
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown field(s) {unknown}", stacklevel=3)
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["channel"] = _channel_from_dict(data["channel"], source)
        if kwargs.get("files") is None:
            kwargs["files"] = []
        config = object.__new__(cls)  # filled field by field so that validate() names the file in its messages
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default
            setattr(config, f.name, kwargs.get(f.name, default))
        config.validate(source)
        return config


def _channel_from_dict(data: Any, source: str) -> ChannelConfig:
    """A ChannelConfig from its saved dict, with every type checked before construction (no silent coercion)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: field 'channel' expected an object of ChannelConfig fields, got {_describe(data)}")
    names = {f.name: f for f in fields(ChannelConfig)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(
            f"{source}: field 'channel' has unknown keys {unknown}; ChannelConfig fields are {list(names)}"
        )
    if "hidden_size" not in data:
        raise ValueError(f"{source}: field 'channel.hidden_size' is missing")
    expected = {
        "hidden_size": ("an int >= 1", lambda v: _is_int(v) and v >= 1),
        "embedding_size": ("an int >= 1 or null", lambda v: v is None or (_is_int(v) and v >= 1)),
        "kind": ("one of ('linear', 'mlp', 'gated')", lambda v: v in ("linear", "mlp", "gated")),
        "norm": ("one of ('layernorm', 'rmsnorm', 'none')", lambda v: v in ("layernorm", "rmsnorm", "none")),
        "mlp_ratio": ("a number > 0", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
        "bias": ("true or false", lambda v: isinstance(v, bool)),
    }
    for key, value in data.items():
        what, ok = expected[key]
        if not ok(value):
            raise ValueError(f"{source}: field 'channel.{key}' expected {what}, got {_describe(value)}")
    return ChannelConfig(**data)
