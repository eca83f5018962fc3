"""The "official" protocol of GSM8K and MATH500: the prompts, shots and answer extraction behind the numbers
LLaDA's authors publish for LLaDA-8B-Instruct (OpenCompass, as their `EVAL.md` and
`eval_llada_opencompass.sh` run it), beside d1's own protocol (the tasks' `build_prompt`/`parse`).

Sources (repository ML-GSAI/LLaDA, which vendors the OpenCompass it ran):
- GSM8K: `opencompass/configs/datasets/gsm8k/gsm8k_gen_1d7fe4.py` (used by
  `examples/llada_instruct_gen_gsm8k_length256_block8.py`): four fixed worked examples as alternating
  user/assistant chat turns, then `Question: {question}\\nLet's think step by step\\nAnswer:`; the model's chat
  template with the generation prompt (`opencompass/models/dllm.py: LLaDAModel.generate`), no prefill,
  special tokens dropped when decoding; answer = the last number before any `Question:` the model goes on to
  write (`gsm8k_postprocess`), correct when within 1e-6 of the `####` answer (`Gsm8kEvaluator`).
- MATH: `opencompass/configs/datasets/math/math_0shot_gen_11c4b5.py` (used by
  `examples/llada_instruct_gen_math_length512_block64.py`): zero-shot, the problem then
  `Please reason step by step, and put your final answer within \\boxed{}.`; answer = the last `\\boxed{}`
  (`math_postprocess_v2`). OpenCompass grades MATH (5000 problems) with its own equivalence check; here the
  MATH500 subset is graded with d1's `is_equiv` (the MATH dataset's normalisation), a documented drift.
HumanEval and MBPP have several published protocols (LLaDA's OpenCompass = `official`, Dream's lm-eval fork =
`dream`, DiffuCoder's Qwen2.5-Coder harness = `diffucoder`, plain completion = `completion`), defined in
`d1.tasks.code_protocols`.
Dream's published numbers come from lm-evaluation-harness tasks (`gsm8k_cot`, `minerva_math`, zero-shot, chat
template), which `d1 harness` runs; see docs/evaluation.md.
"""

from __future__ import annotations

import re
from typing import Any

from d1.tasks.base import ParsedAnswer, Task
from d1.tasks.code_protocols import CODE_PROTOCOL_TASKS
from d1.tasks.gsm8k import GSM8KTask
from d1.tasks.latex import extract_boxed_answer, is_equiv
from d1.tasks.math500 import Math500Task

PROTOCOLS = ("d1", "official", "dream", "diffucoder", "completion")

_GSM8K_QUESTION = "Question: {question}\nLet's think step by step\nAnswer:"
_GSM8K_SHOTS = (
    (
        "Angelo and Melanie want to plan how many hours over the next week they should study together for their "
        "test next week. They have 2 chapters of their textbook to study and 4 worksheets to memorize. They "
        "figure out that they should dedicate 3 hours to each chapter of their textbook and 1.5 hours for each "
        "worksheet. If they plan to study no more than 4 hours each day, how many days should they plan to study "
        "total over the next week if they take a 10-minute break every hour, include 3 10-minute snack breaks "
        "each day, and 30 minutes for lunch each day?",
        "Angelo and Melanie think they should dedicate 3 hours to each of the 2 chapters, 3 hours x 2 chapters = "
        "6 hours total.\nFor the worksheets they plan to dedicate 1.5 hours for each worksheet, 1.5 hours x 4 "
        "worksheets = 6 hours total.\nAngelo and Melanie need to start with planning 12 hours to study, at 4 "
        "hours a day, 12 / 4 = 3 days.\nHowever, they need to include time for breaks and lunch. Every hour they "
        "want to include a 10-minute break, so 12 total hours x 10 minutes = 120 extra minutes for breaks.\nThey "
        "also want to include 3 10-minute snack breaks, 3 x 10 minutes = 30 minutes.\nAnd they want to include "
        "30 minutes for lunch each day, so 120 minutes for breaks + 30 minutes for snack breaks + 30 minutes for "
        "lunch = 180 minutes, or 180 / 60 minutes per hour = 3 extra hours.\nSo Angelo and Melanie want to plan "
        "12 hours to study + 3 hours of breaks = 15 hours total.\nThey want to study no more than 4 hours each "
        "day, 15 hours / 4 hours each day = 3.75\nThey will need to plan to study 4 days to allow for all the "
        "time they need.\nThe answer is 4\n",
    ),
    (
        "Mark's basketball team scores 25 2 pointers, 8 3 pointers and 10 free throws.  Their opponents score "
        "double the 2 pointers but half the 3 pointers and free throws.  What's the total number of points "
        "scored by both teams added together?",
        "Mark's team scores 25 2 pointers, meaning they scored 25*2= 50 points in 2 pointers.\nHis team also "
        "scores 6 3 pointers, meaning they scored 8*3= 24 points in 3 pointers\nThey scored 10 free throws, and "
        "free throws count as one point so they scored 10*1=10 points in free throws.\nAll together his team "
        "scored 50+24+10= 84 points\nMark's opponents scored double his team's number of 2 pointers, meaning "
        "they scored 50*2=100 points in 2 pointers.\nHis opponents scored half his team's number of 3 pointers, "
        "meaning they scored 24/2= 12 points in 3 pointers.\nThey also scored half Mark's team's points in free "
        "throws, meaning they scored 10/2=5 points in free throws.\nAll together Mark's opponents scored "
        "100+12+5=117 points\nThe total score for the game is both team's scores added together, so it is "
        "84+117=201 points\nThe answer is 201\n",
    ),
    (
        "Bella has two times as many marbles as frisbees. She also has 20 more frisbees than deck cards. If she "
        "buys 2/5 times more of each item, what would be the total number of the items she will have if she "
        "currently has 60 marbles?",
        "When Bella buys 2/5 times more marbles, she'll have increased the number of marbles by 2/5*60 = 24\n"
        "The total number of marbles she'll have is 60+24 = 84\nIf Bella currently has 60 marbles, and she has "
        "two times as many marbles as frisbees, she has 60/2 = 30 frisbees.\nIf Bella buys 2/5 times more "
        "frisbees, she'll have 2/5*30 = 12 more frisbees.\nThe total number of frisbees she'll have will "
        "increase to 30+12 = 42\nBella also has 20 more frisbees than deck cards, meaning she has 30-20 = 10 "
        "deck cards\nIf she buys 2/5 times more deck cards, she'll have 2/5*10 = 4 more deck cards.\nThe total "
        "number of deck cards she'll have is 10+4 = 14\nTogether, Bella will have a total of 14+42+84 = 140 "
        "items\nThe answer is 140\n",
    ),
    (
        "A group of 4 fruit baskets contains 9 apples, 15 oranges, and 14 bananas in the first three baskets "
        "and 2 less of each fruit in the fourth basket. How many fruits are there?",
        "For the first three baskets, the number of apples and oranges in one basket is 9+15=24\nIn total, "
        "together with bananas, the number of fruits in one basket is 24+14=38 for the first three baskets.\n"
        "Since there are three baskets each having 38 fruits, there are 3*38=114 fruits in the first three "
        "baskets.\nThe number of apples in the fourth basket is 9-2=7\nThere are also 15-2=13 oranges in the "
        "fourth basket\nThe combined number of oranges and apples in the fourth basket is 13+7=20\nThe fourth "
        "basket also contains 14-2=12 bananas.\nIn total, the fourth basket has 20+12=32 fruits.\nThe four "
        "baskets together have 32+114=146 fruits.\nThe answer is 146\n",
    ),
)
"""OpenCompass's four GSM8K shots (gsm8k_gen_1d7fe4), as LLaDA's evaluation sends them."""

_MATH_INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."
_NUMBER = re.compile(r"-?\d+\.\d+|-?\d+")


class _OfficialMixin(Task):
    """Chat-formatted official prompts: the messages go through the chat template, no `<reasoning>` prefill."""

    source = ""

    def build_prompt(
        self, tokenizer: Any, question: str, few_shot: int = 0, examples: Any = None, system_prompt: Any = None
    ) -> str:
        """The official chat messages through the model's chat template with the generation prompt."""
        messages = self.build_messages(question)
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class OfficialGSM8K(_OfficialMixin, GSM8KTask):
    """GSM8K as LLaDA's OpenCompass evaluation runs it (4 fixed shots as chat turns)."""

    source = "OpenCompass gsm8k_gen_1d7fe4 (4-shot chat, last number), as in ML-GSAI/LLaDA opencompass/examples"

    def build_messages(self, question: str, *args: Any, **kwargs: Any) -> list[dict[str, str]]:
        messages = []
        for shot_question, shot_answer in _GSM8K_SHOTS:
            messages.append({"role": "user", "content": _GSM8K_QUESTION.format(question=shot_question)})
            messages.append({"role": "assistant", "content": shot_answer})
        messages.append({"role": "user", "content": _GSM8K_QUESTION.format(question=question)})
        return messages

    def parse(self, text: str, ground_truth: Any, question: str = "") -> ParsedAnswer:
        """The last number before any `Question:` the model writes next; within 1e-6 of the truth."""
        numbers = _NUMBER.findall(text.split("Question:")[0])
        extracted = numbers[-1] if numbers else None
        try:
            correct = extracted is not None and abs(float(extracted) - float(ground_truth)) < 1e-6
        except (TypeError, ValueError):
            correct = False
        return ParsedAnswer(extracted=extracted, correct=correct, n_correct=int(correct))


class OfficialMath500(_OfficialMixin, Math500Task):
    """MATH500 with OpenCompass's zero-shot MATH prompt and last-`\\boxed{}` extraction."""

    source = "OpenCompass math_0shot_gen_11c4b5 (0-shot, last \\boxed{}), as in ML-GSAI/LLaDA opencompass/examples"

    def build_messages(self, question: str, *args: Any, **kwargs: Any) -> list[dict[str, str]]:
        return [{"role": "user", "content": question + _MATH_INSTRUCTION}]

    def parse(self, text: str, ground_truth: Any, question: str = "") -> ParsedAnswer:
        """The last `\\boxed{}` content, graded with d1's `is_equiv`."""
        extracted = extract_boxed_answer(text)
        correct = extracted is not None and is_equiv(extracted, ground_truth)
        return ParsedAnswer(extracted=extracted, correct=correct, n_correct=int(correct))


OFFICIAL_TASKS: dict[str, Task] = {"gsm8k": OfficialGSM8K(), "math500": OfficialMath500()}
PROTOCOL_TASKS: dict[tuple[str, str], Task] = {
    **{(name, "official"): task for name, task in OFFICIAL_TASKS.items()},
    **CODE_PROTOCOL_TASKS,
}
"""(task, protocol) -> the task variant implementing it; protocol d1 is the task itself."""

D1_SOURCE = "d1 (arXiv 2504.12216) eval/eval.py prompts and eval/parse_and_get_acc.py parsing"


def check_protocol(protocol: str, task: Task) -> None:
    """Refuse an unknown protocol, or `official` for a task that has none, naming what exists."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is unknown; use one of {PROTOCOLS}.")
    if protocol != "d1" and (task.name, protocol) not in PROTOCOL_TASKS:
        defined = sorted(name for name, p in PROTOCOL_TASKS if p == protocol)
        raise ValueError(
            f"protocol={protocol!r} has no definition for task {task.name!r}: the published prompts of that "
            f"protocol cover only {defined}. Use --protocol d1 for {task.name}."
        )


def protocol_task(task: Task, protocol: str) -> Task:
    """The task whose `build_prompt`/`parse` implement `protocol` (`d1`: the task itself)."""
    check_protocol(protocol, task)
    return task if protocol == "d1" else PROTOCOL_TASKS[task.name, protocol]


def protocol_source(task: Task, protocol: str) -> str:
    """Where the protocol's prompts and parsing come from, for the protocol card."""
    if protocol == "d1":
        return getattr(task, "source", "") or D1_SOURCE
    return PROTOCOL_TASKS[task.name, protocol].source  # type: ignore[attr-defined]
