"""relaykit.integrations.lm_eval: the ``relaykit`` lm-eval model runs offline on a tiny saved model and tokenizer
with tiny local tasks (generate_until with a block cache and mean NFE; multiple choice through loglikelihood)."""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager
from tiny import tiny_qwen2
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import relaykit
from relaykit.integrations.lm_eval import RelayLM

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
CHARS = list("0123456789abcdefghij =+\n")
TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {kind}
doc_to_text: "{{{{question}}}}"
doc_to_target: {target}
{extra}
"""


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character of CHARS, plus <unk> and <eos> (ids below the tiny model's vocabulary of 48)."""
    vocab = {c: i for i, c in enumerate(CHARS)} | {"<unk>": len(CHARS), "<eos>": len(CHARS) + 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm_eval")
    model = tiny_qwen2()
    model.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    relay = relaykit.attach(model)
    with torch.no_grad():
        for p in relay.channel.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))  # a non-trivial relay
    relay.save_pretrained(root / "relay")
    docs = [{"question": q, "answer": a, "choices": [a, "0"], "gold": 0} for q, a in
            [("1+2=", "3"), ("2+2=", "4"), ("a b=", "c")]]  # fmt: skip
    (root / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = root / "tasks"
    tasks.mkdir()
    gen = 'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 6\nmetric_list:\n  - metric: exact_match'
    (tasks / "gen.yaml").write_text(
        TASK.format(
            name="relay_tiny_gen", data=root / "data.jsonl", kind="generate_until", target='"{{answer}}"', extra=gen
        )  # fmt: skip
    )
    (tasks / "mc.yaml").write_text(
        TASK.format(
            name="relay_tiny_mc",
            data=root / "data.jsonl",
            kind="multiple_choice",
            target="gold",
            extra='doc_to_choice: "{{choices}}"\nmetric_list:\n  - metric: acc',
        )  # fmt: skip
    )
    return {"root": root, "model": root / "model", "relay": root / "relay", "tasks": tasks}


def test_readme_snippet_generates_with_relay_and_reports_mean_nfe(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folders["root"])
    marker = "<!-- lm-eval: executed by tests/test_integration_lm_eval.py -->"
    block = README.split(marker)[1].split("```python\n")[1].split("```")[0]
    ns = {
        "model_dir": folders["model"],
        "relay_dir": folders["relay"],
        "task_manager": TaskManager(include_path=str(folders["tasks"]), include_defaults=False),
    }
    exec(compile(block, "README lm-eval", "exec"), ns)
    results, nfe_file = ns["results"], folders["root"] / "nfe.json"
    assert "exact_match,none" in results["results"]["relay_tiny_gen"]
    nfe = json.loads(nfe_file.read_text())
    assert len(nfe["nfe"]) == 3 and nfe["mean_nfe"] == sum(nfe["nfe"]) / 3
    # 6 new tokens -> 2 blocks of 4: at least one step per block plus the prompt prefill and one commit pass
    assert all(n >= 4 for n in nfe["nfe"])
    # the responses are relaykit.generate's, cut at the stop string
    lm = RelayLM(pretrained=str(folders["model"]), relay=str(folders["relay"]), block_size=4, cache="prefix",
                 attention="block_causal")  # fmt: skip
    prompt = lm.tokenizer("1+2=", add_special_tokens=False, return_tensors="pt")["input_ids"]
    res = relaykit.generate(lm.relay, prompt, max_new_tokens=8, block_size=4, use_cache="prefix",
                            attention="block_causal", policy=relaykit.Threshold(0.9))  # fmt: skip
    expected = lm._cut(res.sequences[0, 4:].tolist(), ["\n"])
    sample = next(s for s in results["samples"]["relay_tiny_gen"] if s["doc"]["question"] == "1+2=")
    assert sample["resps"][0][0] == expected
    assert lm.relay.channel.state_dict()["proj.weight"].abs().sum() > 0  # the relay folder was loaded


def test_loglikelihood_is_a_seeded_monte_carlo_estimate(folders: dict[str, Path]) -> None:
    results = lm_eval.simple_evaluate(
        model="relaykit", model_args=f"pretrained={folders['model']},mc_num=8", tasks=["relay_tiny_mc"],
        task_manager=TaskManager(include_path=str(folders["tasks"]), include_defaults=False),
    )  # fmt: skip
    assert 0.0 <= results["results"]["relay_tiny_mc"]["acc,none"] <= 1.0
    lm = RelayLM(pretrained=str(folders["model"]), mc_num=8, batch_size=1)
    request = Instance("loglikelihood", {}, ("1+2=", "3"), 0)
    (ll, greedy), = lm.loglikelihood([request])  # fmt: skip
    assert ll < 0 and isinstance(greedy, bool)
    # one masked token: the estimate is exactly log p of it given the context
    relay, ids = lm.relay, torch.tensor([lm._encode("1+2=3")])
    masked = ids.clone()
    masked[0, -1] = relay.mask_token_id
    with torch.no_grad():
        exact = relay(masked).logits[0, -1].float().log_softmax(-1)[ids[0, -1]]
    assert ll == pytest.approx(float(exact), abs=1e-5)


def test_bad_model_arguments_are_refused(folders: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="cache must be one of"):
        RelayLM(pretrained=str(folders["model"]), cache="everything")
    with pytest.raises(ValueError, match="exactly one of"):
        RelayLM()
    with pytest.raises(ValueError, match="model_class"):
        RelayLM(pretrained=str(folders["model"]), model_class="Trainer")
