"""Task registry, prompt building with a LLaDA-like chat template, and the shared d1 data files."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from d1.tasks import TASKS, Task, get_task, register_task, unregister_task
from d1.tasks.base import ParsedAnswer, read_records, subsample_indices

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"

# LLaDA-8B-Instruct's template: bos once, header, trimmed content, <|eot_id|>; then the assistant header.
LLADA_LIKE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
HEADER = "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
FOOTER = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<reasoning>"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2, "<|eot_id|>": 3}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<unk>"
    )
    tok.chat_template = LLADA_LIKE_TEMPLATE
    return tok


def _reference(*parts: str) -> Path:
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip("../shared/reference not found: reference fixtures absent")
    return path


KNOWN = "acecode, countdown, gsm8k, humaneval, math, math500, mbpp, sudoku, tiny_code"


def test_registry_names_and_aliases() -> None:
    assert set(TASKS) == {"gsm8k", "math500", "countdown", "sudoku", "humaneval", "mbpp", "acecode", "tiny_code"}
    assert get_task("math") is get_task("math500") is get_task(" MATH500 ")
    with pytest.raises(ValueError, match=f"known tasks: {KNOWN}"):
        get_task("mmlu")


def test_register_task() -> None:
    class Echo(Task):
        name = "echo-test"
        aliases = ("echo",)
        system_prompt = "Say it."

        def parse(self, text: str, ground_truth: object, question: str = "") -> ParsedAnswer:
            return ParsedAnswer(text, text == ground_truth, int(text == ground_truth))

    try:
        task = register_task(Echo())
        assert get_task("echo") is task
        assert get_task("echo-test").parse("a", "a").correct
    finally:
        unregister_task("echo-test")
    with pytest.raises(ValueError, match=f"known tasks: {KNOWN}$"):
        get_task("echo")


@pytest.mark.parametrize("name", ["gsm8k", "math500", "countdown", "sudoku"])
def test_every_task_is_complete(name: str) -> None:
    task = get_task(name)
    assert task.system_prompt
    assert len(task.reward_funcs) == len(task.default_reward_weights) >= 1
    assert task.default_subsample == {"gsm8k": -1, "math500": -1, "countdown": 256, "sudoku": 256}[name]


def test_build_prompt_matches_d1(tokenizer: PreTrainedTokenizerFast) -> None:
    gsm = get_task("gsm8k")
    prompt = gsm.build_prompt(tokenizer, "How many?")
    assert prompt == HEADER + gsm.system_prompt + "\n\nHow many?" + FOOTER
    # d1's GSM8K loader never fills its few-shot examples: an empty block around the question.
    few = gsm.build_messages("How many?", few_shot=2)[0]["content"]
    assert few == gsm.system_prompt + "\n\n\n\nQuestion: How many?\nAnswer:\n"
    shots = gsm.build_messages("Q3", few_shot=1, examples=[("Q1", "A1"), ("Q2", "A2")])[0]["content"]
    assert shots == gsm.system_prompt + "\n\nQuestion: Q1\nAnswer:\nA1\n\nQuestion: Q3\nAnswer:\n"
    countdown = get_task("countdown")  # d1 forces zero-shot for Countdown
    assert countdown.build_messages("Q", few_shot=3) == countdown.build_messages("Q")


def test_shared_data_files_load_and_build_prompts(tokenizer: PreTrainedTokenizerFast) -> None:
    sudoku_items = get_task("sudoku").load_test(_reference("d1-data", "4x4_test_sudoku.csv"))
    countdown_items = get_task("countdown").load_test(_reference("d1-data", "countdown_cd3_test.jsonl"))
    assert len(sudoku_items) == 500
    assert len(countdown_items) == 256
    sudoku_prompt = get_task("sudoku").build_prompt(tokenizer, sudoku_items[0]["question"])
    expected_content = (get_task("sudoku").system_prompt + "\n\n" + sudoku_items[0]["question"]).strip()
    assert sudoku_prompt == HEADER + expected_content + FOOTER
    assert expected_content.endswith("</answer>\n\n\nSolve the following Sudoku puzzle: 3102200002100320")
    countdown_prompt = get_task("countdown").build_prompt(tokenizer, countdown_items[0]["question"])
    assert countdown_prompt.endswith("</answer>\n\nNumbers: [30, 100, 93]\nTarget: 23" + FOOTER)


def test_subsample_indices() -> None:
    assert subsample_indices(5, -1, 0) == [0, 1, 2, 3, 4]
    picked = subsample_indices(500, 256, 42)
    assert len(set(picked)) == 256
    assert picked == subsample_indices(500, 256, 42)
    with pytest.raises(ValueError, match="subsample"):
        subsample_indices(5, 6, 0)


def test_read_records_formats(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("Puzzle,Solution\n0123,4567\n")
    assert read_records(tmp_path / "a.csv") == [{"Puzzle": "0123", "Solution": "4567"}]  # zeros kept
    (tmp_path / "b.json").write_text('{"question": ["q1", "q2"], "answer": ["#### 1", "#### 2"]}')
    assert read_records(tmp_path / "b.json")[1] == {"question": "q2", "answer": "#### 2"}
    (tmp_path / "c.json").write_text('[{"problem": "p", "answer": "1"}]')
    assert read_records(tmp_path / "c.json") == [{"problem": "p", "answer": "1"}]
    import pandas as pd

    pd.DataFrame({"problem": ["p"], "answer": ["1"]}).to_parquet(tmp_path / "d.parquet")
    assert read_records(tmp_path / "d.parquet") == [{"problem": "p", "answer": "1"}]
    with pytest.raises(ValueError, match="unsupported"):
        read_records(tmp_path / "e.txt")
