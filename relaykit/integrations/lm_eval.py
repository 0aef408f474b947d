"""RelayLM: an lm-evaluation-harness model registered as ``relaykit`` (``pip install "relaykit[eval]"``).

``generate_until`` decodes with :func:`relaykit.generate` (block size, confidence threshold, cache mode, relay
folder are model arguments) and reports the mean NFE (forward passes per request) in the log, in ``lm.mean_nfe``
and, with ``nfe_file=``, in a JSON file. ``loglikelihood`` is the Monte-Carlo estimate diffusion LMs use in
lm-eval (LLaDA's: mask k ~ U{1..m} of the m continuation tokens, weight the masked tokens' log-probs by m / k,
average over ``mc_num`` draws); ``loglikelihood_rolling`` scores the whole text that way.

Importing this module registers the model. From Python::

    import lm_eval, relaykit.integrations.lm_eval  # registers "relaykit"
    results = lm_eval.simple_evaluate(
        model="relaykit",
        model_args="pretrained=path/to/model,relay=path/to/relay,block_size=32,threshold=0.9,cache=prefix",
        tasks=["gsm8k"],
    )

From the shell, ``python -m relaykit.integrations.lm_eval --model relaykit --model_args ... --tasks ...`` runs
lm-eval's own command line with the model registered.

Model arguments: ``pretrained`` (path or hub id; or pass ``model=`` a RelayModel / backbone and ``tokenizer=`` an
object from Python), ``relay`` (relay folder or hub id; none: a fresh zero channel, i.e. the bare backbone),
``tokenizer``, ``model_class`` (``AutoModelForCausalLM`` default, or ``AutoModel`` for LLaDA's remote code),
``trust_remote_code``, ``dtype``, ``device``, ``mask_token_id``, ``adapter``, ``block_size`` (32),
``threshold`` (0.9), ``cache`` (``none`` default, ``prefix``, ``dual``, ``sub_block``), ``sub_block_size``,
``attention``, ``max_new_tokens`` (default: the task's ``max_gen_toks``, else 256), ``batch_size``, ``mc_num``
(128), ``seed``, ``nfe_file``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from torch import nn

import relaykit
from relaykit.policies import Threshold
from relaykit.relay import RelayModel
from relaykit.shift import align_logits

log = logging.getLogger(__name__)
CACHE_MODES = ("none", "prefix", "dual", "sub_block")


def _load(pretrained: str, *, model_class: str, trust_remote_code: bool, dtype: str | None, device: str) -> nn.Module:
    import transformers

    if not hasattr(transformers, model_class) or not model_class.startswith("AutoModel"):
        raise ValueError(
            f"model_class must name a transformers Auto class such as AutoModelForCausalLM, got {model_class!r}"
        )
    auto = getattr(transformers, model_class)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    return auto.from_pretrained(pretrained, **kwargs).to(device).eval()


@register_model("relaykit")
class RelayLM(LM):
    """lm-eval model: a backbone with a relay channel, decoded with :func:`relaykit.generate`."""

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model: nn.Module | None = None,
        relay: str | None = None,
        tokenizer: Any = None,
        model_class: str = "AutoModelForCausalLM",
        trust_remote_code: bool = False,
        dtype: str | None = None,
        device: str | None = None,
        mask_token_id: int | None = None,
        adapter: str | None = None,
        block_size: int = 32,
        threshold: float = 0.9,
        cache: str = "none",
        sub_block_size: int | None = None,
        attention: str | None = None,
        max_new_tokens: int | None = None,
        batch_size: int | str = 1,
        mc_num: int = 128,
        seed: int = 0,
        nfe_file: str | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            log.warning("relaykit lm-eval model: ignoring unknown model arguments %s", sorted(unused))
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        if (model is None) == (pretrained is None):
            raise ValueError("give exactly one of pretrained=<path or hub id> and model=<module>")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None:
            assert pretrained is not None
            model = _load(
                pretrained, model_class=model_class, trust_remote_code=trust_remote_code, dtype=dtype, device=device
            )
        if isinstance(model, RelayModel):
            self.relay = model
        elif relay is not None:
            self.relay = RelayModel.from_pretrained(model, relay)
        else:
            options = {} if mask_token_id is None else {"mask_token_id": int(mask_token_id)}
            self.relay = relaykit.attach(model, adapter, **options)
        if tokenizer is None or isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            source = tokenizer or pretrained
            if source is None:
                raise ValueError("pass tokenizer=... (a tokenizer object or a path) together with model=")
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        self.tokenizer = tokenizer
        self.block_size = int(block_size)
        self.threshold = float(threshold)
        self.cache = cache
        self.sub_block_size = None if sub_block_size is None else int(sub_block_size)
        self.attention = attention
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.batch_size = 1 if batch_size == "auto" else int(batch_size)
        self.mc_num = int(mc_num)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.nfe_file = nfe_file
        self.nfe: list[int] = []
        self._device = next(self.relay.parameters()).device

    # ------------------------------------------------------------------ helpers
    @property
    def mean_nfe(self) -> float:
        """Mean forward passes per generated request so far (nan before any)."""
        return sum(self.nfe) / len(self.nfe) if self.nfe else math.nan

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _canvas_tokens(self, wanted: int) -> int:
        """``wanted`` new tokens rounded up to whole blocks."""
        return max(1, math.ceil(wanted / self.block_size)) * self.block_size

    def _stop_ids(self) -> set[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return set() if eos is None else {int(eos)}

    def _cut(self, ids: Sequence[int], until: Sequence[str]) -> str:
        stops = self._stop_ids()
        kept: list[int] = []
        for t in ids:
            if t in stops or t == self.relay.mask_token_id:
                break
            kept.append(int(t))
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        for stop in until:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text

    # ------------------------------------------------------------------ lm-eval API
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Decode every request with relay; requests with prompts of equal token length share a batch."""
        out: list[str | None] = [None] * len(requests)
        encoded = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            wanted = self.max_new_tokens or int(gen_kwargs.get("max_gen_toks", 256))
            encoded.append((i, self._encode(context), until, self._canvas_tokens(wanted)))
        groups: dict[tuple[int, int], list[tuple[int, list[int], list[str], int]]] = {}
        for item in encoded:
            groups.setdefault((len(item[1]), item[3]), []).append(item)
        for (_, new), items in groups.items():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                prompt = torch.tensor([ids for _, ids, _, _ in chunk], dtype=torch.long, device=self._device)  # (b, P)
                res = relaykit.generate(
                    self.relay,
                    prompt,
                    max_new_tokens=new,
                    block_size=self.block_size,
                    policy=Threshold(self.threshold),
                    use_cache=False if self.cache == "none" else self.cache,
                    sub_block_size=self.sub_block_size,
                    attention=self.attention,  # type: ignore[arg-type]
                )
                for row, (i, ids, until, _) in enumerate(chunk):
                    text = self._cut(res.sequences[row, len(ids) :].tolist(), until)
                    out[i] = text
                    self.nfe.append(int(res.nfe[row]))
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        log.info("relaykit: mean NFE %.2f over %d generated requests", self.mean_nfe, len(self.nfe))
        if self.nfe_file:
            with open(self.nfe_file, "w") as f:
                json.dump({"mean_nfe": self.mean_nfe, "nfe": self.nfe}, f)
        return [text or "" for text in out]

    @torch.no_grad()
    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Monte-Carlo log p(continuation | context) and whether greedy decoding of the masked continuation
        (one pass, all continuation tokens masked) reproduces it."""
        if not continuation:
            return 0.0, True
        x0 = torch.tensor([context + continuation], dtype=torch.long, device=self._device)  # (1, L)
        p, m = len(context), len(continuation)
        shift = int(self.relay.adapter.token_shift)
        if shift and p < shift:
            raise ValueError(f"the backbone has a token shift of {shift}: give at least {shift} context token(s)")
        mask = self.relay.mask_token_id
        target = x0[:, p:]  # (1, m)
        total, draws = 0.0, 0
        while draws < self.mc_num:
            b = min(self.batch_size * 16, self.mc_num - draws)
            k = torch.randint(1, m + 1, (b, 1), generator=self.generator)  # masked tokens per draw
            ranks = torch.rand(b, m, generator=self.generator).argsort(-1).argsort(-1)  # (b, m) random ranks
            hide = (ranks < k).to(self._device)  # (b, m): k random continuation positions
            z = x0.expand(b, -1).clone()
            z[:, p:] = torch.where(hide, mask, z[:, p:])
            logits = align_logits(self.relay(z).logits.float(), shift)[:, p:]  # (b, m, V)
            logp = logits.log_softmax(-1).gather(-1, target.expand(b, -1).unsqueeze(-1)).squeeze(-1)  # (b, m)
            total += float(((logp * hide).sum(-1) * m / k.to(self._device).squeeze(-1)).sum())
            draws += b
        z = x0.clone()
        z[:, p:] = mask
        logits = align_logits(self.relay(z).logits, shift)[:, p:]  # (1, m, V)
        greedy = bool((logits.argmax(-1) == target).all())
        return total / draws, greedy

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = []
        for req in requests:
            context, continuation = req.args
            whole, ctx = self._encode(context + continuation), self._encode(context)
            if whole[: len(ctx)] != ctx:  # the tokenizer merged across the boundary: tokenise the two apart
                whole = ctx + self._encode(continuation)
            results.append(self._score(ctx, whole[len(ctx) :]))
            self.cache_hook.add_partial("loglikelihood", req.args, results[-1])
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        results = []
        bos = getattr(self.tokenizer, "bos_token_id", None)
        for req in requests:
            (text,) = req.args
            ids = self._encode(text)
            context = [int(bos)] if bos is not None else ids[:1]  # a token shift needs one clean token
            rest = ids if bos is not None else ids[1:]
            results.append(self._score(context, rest)[0])
        return results


def _main() -> None:
    """lm-eval's command line with the ``relaykit`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    _main()


__all__ = ["CACHE_MODES", "RelayLM"]
