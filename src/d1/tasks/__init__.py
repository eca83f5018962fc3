"""Task registry: d1's four benchmarks (``gsm8k``, ``math500`` alias ``math``, ``countdown``, ``sudoku``) and the
code tasks (``humaneval``, ``mbpp``, ``acecode``, ``tiny_code``)."""

from __future__ import annotations

from d1.tasks import acecode, countdown, gsm8k, humaneval, math500, mbpp, sudoku, tiny_code
from d1.tasks.base import ParsedAnswer, Task

TASKS: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


def register_task(task: Task) -> Task:
    """Add a task (and its aliases) to the registry; later registrations replace earlier ones."""
    TASKS[task.name] = task
    for alias in task.aliases:
        _ALIASES[alias] = task.name
    return task


def unregister_task(name: str) -> None:
    """Remove a task and its aliases (e.g. a temporary task in a test)."""
    TASKS.pop(name, None)
    for alias in [a for a, target in _ALIASES.items() if target == name]:
        del _ALIASES[alias]


def get_task(name: str) -> Task:
    """The registered task called ``name`` (or an alias such as ``math``); ``ValueError`` if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        known = sorted([*TASKS, *_ALIASES])
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(known)}")
    return TASKS[key]


for _module in (gsm8k, math500, countdown, sudoku, humaneval, mbpp, acecode, tiny_code):
    register_task(_module.TASK)

__all__ = ["TASKS", "ParsedAnswer", "Task", "get_task", "register_task", "unregister_task"]
