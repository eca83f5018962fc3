"""The lm-eval model `d1`, the ELBO estimator against exact enumeration, protocols and the protocol card."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # lm-eval's local tasks must never reach for the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from d1.cli import harness as harness_cli  # noqa: E402
from d1.diffusion.likelihood import elbo_loglikelihood  # noqa: E402
from d1.diffusion.samplers import LLaDAOptions  # noqa: E402
from d1.evaluation import harness, runner  # noqa: E402
from d1.evaluation.config import EvalConfig  # noqa: E402
from d1.evaluation.generation import generate_answers  # noqa: E402
from d1.evaluation.harness import D1HarnessLM  # noqa: E402
from d1.evaluation.protocol import read_card  # noqa: E402
from d1.evaluation.runner import run_eval  # noqa: E402
from d1.evaluation.score import score_paths  # noqa: E402
from d1.tasks import get_task  # noqa: E402
from d1.tasks.official import OFFICIAL_TASKS  # noqa: E402
from tests.conftest import reference_path  # noqa: E402

SAMPLER = {"gen_length": 16, "block_length": 8, "steps": 8}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline even when `datasets`/`huggingface_hub` were imported before this module set the variables."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def lm(tiny_model_dir: Path) -> D1HarnessLM:
    return D1HarnessLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=2, mc_num=4, seed=7, **SAMPLER)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two local lm-eval tasks (generate_until, multiple choice) and a perplexity task, on local jsonl data."""
    folder = tmp_path_factory.mktemp("tasks")
    gen = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a, b in [(1, 1), (2, 3), (4, 4)]]
    mc = [{"question": "1+1=", "choices": ["2", "3"], "label": 0}, {"question": "2+3=", "choices": ["4", "5"], "label": 1}]
    for name, rows in (("gen", gen), ("mc", mc)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = "dataset_path: json\ntest_split: test\ndoc_to_text: '{{question}}'\n"
    (folder / "gen.yaml").write_text(
        f"task: tiny_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 16\nmetric_list:\n  - metric: exact_match\n"
    )
    (folder / "mc.yaml").write_text(
        f"task: tiny_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    (folder / "ppl.yaml").write_text(
        f"task: tiny_ppl\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: word_perplexity\n"
    )
    return folder


# ------------------------------------------------------------------ lm-eval end to end


def test_simple_evaluate_runs_local_generate_and_multiple_choice_tasks(lm: D1HarnessLM, task_dir: Path) -> None:
    results = lm_eval.simple_evaluate(
        model=lm, tasks=["tiny_gen", "tiny_mc"], task_manager=harness_cli.task_manager(str(task_dir)), log_samples=True
    )
    assert set(results["results"]) == {"tiny_gen", "tiny_mc"}
    assert 0.0 <= results["results"]["tiny_mc"]["acc,none"] <= 1.0
    gen_samples = results["samples"]["tiny_gen"]
    requests = [sample["arguments"][0] for sample in gen_samples]
    assert [context for context, _ in requests] == ["1+1=", "2+3=", "4+4="]
    assert requests[0][1] == {"until": ["\n"], "max_gen_toks": 16}
    # the answers lm-eval graded are the model's own answers to those requests (cut at the task's "\n")
    direct = lm.generate_until([_request(*request) for request in requests])
    assert [sample["resps"][0][0] for sample in gen_samples] == direct
    # each choice's log-likelihood is the ELBO estimate of that (context, continuation) pair
    mc = results["samples"]["tiny_mc"][0]
    assert [tuple(pair) for pair in mc["arguments"]] == [("1+1=", " 2"), ("1+1=", " 3")]
    values = [resp[0][0] for resp in mc["resps"]]
    assert all(math.isfinite(value) and value < 0 for value in values) and values[0] != values[1]


def test_simple_evaluate_by_registered_name(tiny_model_dir: Path, task_dir: Path) -> None:
    results = lm_eval.simple_evaluate(
        model="d1",
        model_args={"pretrained": str(tiny_model_dir), "mc_num": 2, **SAMPLER},
        tasks=["tiny_mc"],
        task_manager=harness_cli.task_manager(str(task_dir)),
        device="cpu",
        limit=1,
    )
    assert results["results"]["tiny_mc"]["acc,none"] in (0.0, 1.0)


def _request(context: str, gen_kwargs: dict) -> Instance:
    return Instance(request_type="generate_until", doc={}, arguments=(context, gen_kwargs), idx=0)


@pytest.mark.parametrize("keep_special_tokens", [True, False])
def test_generations_equal_d1_eval(tiny_model_dir: Path, keep_special_tokens: bool) -> None:
    """Same prompts, sampler settings, seed and batch size: the harness answers what `d1 eval` writes
    (temperature > 0, so the per-batch seeding must agree too)."""
    options = {**SAMPLER, "temperature": 0.8, "batch_size": 2, "seed": 11}
    lm = D1HarnessLM(pretrained=str(tiny_model_dir), device="cpu", keep_special_tokens=keep_special_tokens, **options)
    task = get_task("gsm8k")
    items = [{"question": q, "ground_truth": 1.0} for q in ("2+2?", "a longer question, 3*3?", "7-1?")]
    records = generate_answers(
        lm.model, lm.tokenizer, task, items, LLaDAOptions(gen_length=16, block_length=8, diffusion_steps=8, temperature=0.8),
        batch_size=2, seed=11, system_prompt="", keep_special_tokens=keep_special_tokens,
        mask_token_id=lm.mask_token_id,
    )  # fmt: skip
    answers = lm.generate_until([_request(record["prompt_input"], {"until": []}) for record in records])
    assert answers == [record["generations"] for record in records]
    assert len(set(answers)) == 3


def test_stop_sequences_and_max_gen_toks_cut_after_decoding(lm: D1HarnessLM) -> None:
    answer = lm.tokenizer.encode("ab\ncd<|endoftext|>", add_special_tokens=False)
    assert lm.finish(answer, {"until": ["\n"]}) == "ab"
    assert lm.finish(answer, {"until": ["zz"]}) == "ab\ncd"
    assert lm.finish(answer, {"until": "c"}) == "ab\n"
    assert lm.finish(answer, {"max_gen_toks": 2}) == "ab"


def test_chat_template_as_hflm(lm: D1HarnessLM) -> None:
    history = [{"role": "user", "content": "hi"}]
    text = lm.apply_chat_template(history)
    assert text == lm.tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
    assert lm.tok_encode(text) == lm.tokenizer.encode(text, add_special_tokens=False)  # BOS not doubled
    assert lm.tokenizer_name == lm.tokenizer.name_or_path.replace("/", "__")
    assert lm.chat_template(True) == lm.tokenizer.chat_template


# ------------------------------------------------------------------ the ELBO estimator


class ToyModel(nn.Module):
    """Vocabulary {0, 1, 2} plus mask 3; every position's logits depend on every visible token."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embed = nn.Parameter(torch.randn(4, 6, generator=generator))
        self.position = nn.Parameter(torch.randn(8, 6, generator=generator))
        self.head = nn.Parameter(torch.randn(6, 4, generator=generator) * 2)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        hidden = self.embed[ids] + self.position[: ids.shape[1]]
        hidden = torch.tanh(hidden + hidden.mean(dim=1, keepdim=True))
        return SimpleNamespace(logits=hidden @ self.head)


def exact_elbo(model: nn.Module, prompt: list[int], target: list[int], cfg_scale: float = 0.0) -> float:
    """The estimator's expectation by enumeration: l uniform on 1..T, S uniform among the l-subsets,
    (T / l) * sum_{i in S} log p(x_i | S masked)."""
    length, total = len(target), 0.0
    for count in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), count))
        for subset in subsets:
            noisy = prompt + [3 if i in subset else token for i, token in enumerate(target)]
            logits = model(torch.tensor([noisy])).logits[0, len(prompt) :]
            if cfg_scale > 0:
                unconditional = [3] * len(prompt) + noisy[len(prompt) :]
                un = model(torch.tensor([unconditional])).logits[0, len(prompt) :]
                logits = un + (cfg_scale + 1) * (logits - un)
            logp = logits.log_softmax(-1)
            term = sum(float(logp[i, target[i]]) for i in subset) * length / count
            total += term / (len(subsets) * length)
    return total


@torch.no_grad()
def test_elbo_is_exact_for_one_token() -> None:
    """T = 1: the only mask is the whole target, so every sample is the exact conditional log-probability."""
    model = ToyModel()
    for cfg in (0.0, 1.5):
        value = elbo_loglikelihood(
            model, torch.tensor([0, 1]), torch.tensor([2]), mc_num=3, batch_size=2, mask_token_id=3, cfg_scale=cfg
        )
        assert value == pytest.approx(exact_elbo(model, [0, 1], [2], cfg), abs=1e-9)


@torch.no_grad()
def test_elbo_estimate_is_unbiased_against_enumeration() -> None:
    """T = 3 over vocabulary 3: the mean of 400 seeded estimates (mc_num 2, l stratified, random subsets) is
    within 4 standard errors of the enumerated expectation, and one estimate within its stated error
    (4 per-sample deviations / sqrt(mc_num))."""
    model = ToyModel()
    prompt, target = torch.tensor([0, 2]), torch.tensor([1, 2, 0])
    exact = exact_elbo(model, [0, 2], [1, 2, 0])
    estimates = torch.tensor([
        elbo_loglikelihood(
            model, prompt, target, mc_num=2, batch_size=2, mask_token_id=3,
            generator=torch.Generator().manual_seed(seed),
        )
        for seed in range(400)
    ], dtype=torch.float64)  # fmt: skip
    standard_error = float(estimates.std()) / math.sqrt(len(estimates))
    assert float(estimates.std()) > 1e-3  # the samples do vary: the check below is not vacuous
    assert abs(float(estimates.mean()) - exact) < 4 * standard_error
    single = elbo_loglikelihood(
        model, prompt, target, mc_num=64, batch_size=16, mask_token_id=3, generator=torch.Generator().manual_seed(1)
    )
    assert abs(single - exact) < 4 * float(estimates.std()) * math.sqrt(2 / 64)


def test_harness_loglikelihood_is_the_seeded_elbo(lm: D1HarnessLM) -> None:
    request = Instance(request_type="loglikelihood", doc={}, arguments=("1+1=", "2"), idx=0)
    (value, greedy), = lm.loglikelihood([request])
    context, continuation = lm._encode_pair("1+1=", "2")
    again = lm.score(context, continuation, 0)
    assert (value, greedy) == again and greedy is False


def test_is_greedy_as_llada_defines_it(tiny_model_dir: Path) -> None:
    """The greedy check answers True exactly for the continuation one-token-per-step decoding produces."""
    lm = D1HarnessLM(pretrained=str(tiny_model_dir), device="cpu", mc_num=1, is_greedy=True, **SAMPLER)
    context = lm.tok_encode("1+1=")
    decoded = harness.generate(
        lm.model, torch.tensor([context]), gen_length=2, block_length=2, steps=2, mask_token_id=lm.mask_token_id
    )[0, len(context) :].tolist()
    assert lm.score(context, decoded, 0)[1] is True
    other = [(decoded[0] + 1) % 60 + 5, decoded[1]]
    assert lm.score(context, other, 0)[1] is False


# ------------------------------------------------------------------ protocols and the card


@pytest.fixture(scope="module")
def gsm8k_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gsm") / "gsm8k.jsonl"
    rows = [{"question": f"What is {a}+{a}?", "answer": f"{a}+{a}={2 * a}\n#### {2 * a}"} for a in range(1, 4)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _eval_config(model: Path, data: Path, out: Path, **overrides) -> EvalConfig:
    return EvalConfig(
        model_path=str(model), dataset="gsm8k", data_path=str(data), output_dir=str(out), gen_length=8,
        block_length=8, diffusion_steps=4, batch_size=3, **overrides,
    )  # fmt: skip


def test_protocol_card_round_trips_and_keys_resumption(tiny_model_dir: Path, gsm8k_jsonl: Path, tmp_path: Path) -> None:
    config = _eval_config(tiny_model_dir, gsm8k_jsonl, tmp_path, protocol="official")
    path = run_eval(config)
    assert path.name.startswith(f"gsm8k_{tiny_model_dir.name}_official_")
    data = json.loads(path.read_text())
    card = read_card(data)
    assert card["protocol"] == "official" and "OpenCompass" in card["protocol_source"]
    assert set(card["software"]) == {"d1", "torch", "transformers", "lm_eval"} and card["software"]["torch"]
    assert card["model_revision"] == {"name_or_path": str(tiny_model_dir), "hub_commit": None, "checkpoint_path": ""}
    assert card["seed"] == 42 and card["subsample"] is None and len(card["weights_fingerprint"]) == 16
    assert "Let's think step by step" in data["generations"][0]["prompt_input"]  # the official prompt was used
    assert read_card(json.loads(json.dumps({"protocol_card": card}))) == card  # write, read back, equal
    (score,) = score_paths([path]).values()
    assert score.protocols == ["official"]
    # software versions may change between a run and its resume; the protocol may not
    data["settings"]["software"]["torch"] = "0.0"
    path.write_text(json.dumps(data))
    run_eval(config)
    data["settings"]["protocol"] = "d1"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="protocol='d1' \\(now 'official'\\)"):
        run_eval(config)


def test_official_prompts_and_extraction() -> None:
    gsm8k, math500 = OFFICIAL_TASKS["gsm8k"], OFFICIAL_TASKS["math500"]
    messages = gsm8k.build_messages("Q?")
    assert [m["role"] for m in messages] == ["user", "assistant"] * 4 + ["user"]
    assert messages[-1]["content"] == "Question: Q?\nLet's think step by step\nAnswer:"
    assert all(m["content"].rstrip().rsplit(" ", 1)[-1].isdigit() for m in messages[1:-1:2])
    assert gsm8k.parse("3 then 1,234 so 18\nQuestion: 99", 18.0).correct
    assert gsm8k.parse("The answer is 7.0", 7.0).correct and not gsm8k.parse("no number", 7.0).correct
    assert math500.build_messages("x?")[0]["content"].endswith("put your final answer within \\boxed{}.")
    assert math500.parse("so \\boxed{1} then \\boxed{\\frac12}", "\\frac{1}{2}").correct


def test_score_refuses_mixed_protocols_in_one_row(tmp_path: Path) -> None:
    legacy = reference_path("d1-generations") / "gsm8k_instruct_256_128_0_generations.json"
    if not legacy.is_file():
        pytest.skip("../shared/reference not found")
    shutil.copy(legacy, tmp_path / "gsm8k_instruct_256_128_0_generations.json")
    data = json.loads(legacy.read_text())
    data["generations"] = data["generations"][:3]
    data["settings"] = {"protocol": "official", "protocol_source": "test"}
    (tmp_path / "gsm8k_instruct_256_128_1_generations.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="mix protocols.*--mix_protocols"):
        score_paths([tmp_path])
    (score,) = score_paths([tmp_path], mix_protocols=True).values()
    assert score.protocols == ["d1", "official"] and len(score.items) == 205 + 3
    (legacy_score,) = score_paths([legacy]).values()
    assert legacy_score.cards == [{"protocol": "d1", "protocol_source": legacy_score.cards[0]["protocol_source"],
                                   "legacy": True}]  # fmt: skip
    assert (legacy_score.correct, legacy_score.total) == (160, 205)  # d1's number, unchanged


# ------------------------------------------------------------------ bad input, before any model loads


@pytest.fixture()
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(runner, "load_model", refuse)
    monkeypatch.setattr(harness, "load_eval_model", refuse)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "tiny_gn"], "'tiny_gn' is not an lm-eval task.*Close matches: tiny_gen"),
        (["--tasks", "tiny_ppl"], "asks for loglikelihood_rolling, which the d1 model refuses"),
        (["--tasks", "tiny_gen", "--model_args", "algo=entropy"], "\\['algo'\\] are not options of the d1 model"),
        (["--tasks", "tiny_gen", "--model_args", "alg=origin"], "alg='origin': option\\(s\\) of sampler\\(s\\) \\['dream', 'fastdllm_dream'\\]"),
        (["--tasks", "tiny_gen", "--model_args", "cache=kv"], "cache='kv' is not one of"),
        (["--tasks", "tiny_gen", "--model_args", "gen_lenght=8"], "did you mean \\['gen_length'\\]"),
        (["--tasks", "tiny_gen", "--model_args", "gen_length=10,block_length=4"], "block_length"),
        (["--tasks", "tiny_gen", "--model_args", "mc_num=0"], "mc_num=0"),
    ],
)
def test_harness_bad_input_fails_before_loading(
    tiny_model_dir: Path, task_dir: Path, no_model_load: None, extra: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        harness_cli.main(["--model_path", str(tiny_model_dir), "--include_path", str(task_dir), *extra])


def test_rolling_loglikelihood_refused(lm: D1HarnessLM) -> None:
    with pytest.raises(NotImplementedError, match="refuses loglikelihood_rolling"):
        lm.loglikelihood_rolling([])


@pytest.mark.parametrize("dataset", ["countdown", "sudoku"])
def test_official_protocol_refused_where_none_exists(tmp_path: Path, no_model_load: None, dataset: str) -> None:
    config = EvalConfig(model_path=str(tmp_path), dataset=dataset, output_dir=str(tmp_path), protocol="official")
    with pytest.raises(ValueError, match=f"no definition for task '{dataset}'.*--protocol d1"):
        run_eval(config)
    with pytest.raises(ValueError, match="fixes its own shots"):
        run_eval(EvalConfig(model_path=str(tmp_path), output_dir=str(tmp_path), protocol="official", few_shot=2))


def test_harness_cli_writes_results_with_card(
    tiny_model_dir: Path, task_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--model_path", str(tiny_model_dir), "--tasks", "tiny_gen", "--include_path", str(task_dir),
            "--model_args", "gen_length=8,block_length=8,steps=4", "--limit", "2", "--output_path", str(tmp_path),
            "--device", "cpu"]  # fmt: skip
    assert harness_cli.main(argv) == 0
    assert "|tiny_gen|" in capsys.readouterr().out.replace(" ", "")
    (path,) = tmp_path.glob("results_*.json")
    results = json.loads(path.read_text())
    card = read_card(results)
    assert card["protocol"] == "lm-eval" and card["tasks"] == ["tiny_gen"] and card["gen_length"] == 8
    assert card["limit"] == 2 and card["software"]["lm_eval"]
