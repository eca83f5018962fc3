"""``math_verify`` bounded in size and time, from any thread: the ``MathVerify`` column of ``d1 score``.

``math_verify`` can run for minutes on a few characters (``\\boxed{9^{9^{9}}}`` makes sympy evaluate a
power tower) and its own timeout uses ``signal.alarm``, which works only in the main thread. So the
checks run in one worker process (spawned once, ``math_verify`` imported once) and the parent enforces a
hard wall-clock limit per item; an item past it counts as wrong, and the worker is killed and restarted.

Before any parsing, text too large or nested too deeply is judged wrong. When ``math_verify`` cannot
parse a whole deeply nested expression it grades a fragment of it instead (a ``\\frac`` nested 150 deep
is read as its innermost ``\\frac{1}{2}`` and accepted), so beyond the caps its verdict would not be
about the answer. The caps sit far above real answers: d1's MATH500 generations nest braces at most 6
deep (ground truths 2) and are at most 2,564 characters long.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection

MAX_BRACE_DEPTH = 16  # deepest ``{`` nesting graded; d1's MATH500 generations reach 6
MAX_CHARS = 20_000  # longest generation or ground truth graded; d1's reach 2,564
DEFAULT_TIMEOUT_S = 5.0  # per item, as math_verify's own default per-parse limit
_START_TIMEOUT_S = 120.0  # spawning Python and importing sympy on a loaded machine
_BATCH_SIZE = 64  # items per round trip: few messages, bounded message size


def brace_depth(text: str) -> int:
    """Deepest nesting of ``{`` in ``text`` (unmatched ``}`` ignored)."""
    depth = deepest = 0
    for char in text:
        if char == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "}" and depth:
            depth -= 1
    return deepest


def within_caps(text: str) -> bool:
    """Whether ``text`` is small and shallow enough to be graded (see the module docstring)."""
    return len(text) <= MAX_CHARS and brace_depth(text) <= MAX_BRACE_DEPTH


def _judge(generation: str, ground_truth: str) -> bool:
    """``math_verify``'s verdict, its signal-based timeouts off (the parent process keeps the time)."""
    from math_verify import parse, verify

    gold = parse(f"${ground_truth}$", parsing_timeout=None)
    predicted = parse(generation, parsing_timeout=None)
    return bool(verify(gold, predicted, timeout_seconds=None))


def _serve(read_fd: int, write_fd: int) -> None:
    """Worker loop: import once, say ready, then answer each batch with one verdict per item."""
    import math_verify  # noqa: F401  (imported before "ready" so that no item pays for it)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then stops us
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # no "timeout is disabled" warnings
    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    replies.send("ready")
    while (batch := requests.recv()) is not None:
        for generation, ground_truth in batch:
            try:
                verdict = _judge(generation, ground_truth)
            except Exception:  # math_verify or sympy failing on odd input: not a match
                verdict = False
            replies.send(verdict)


class MathVerifyJudge:
    """Bounded ``math_verify`` checks; the worker starts on first use and stops on ``close()``/exit.

    One judge serves one thread at a time (each ``score_paths`` call makes its own).
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s}: must be > 0 seconds")
        self.timeout_s = timeout_s
        self.restarts = 0  # workers killed after a timeout or crash
        self._process: subprocess.Popen | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None

    def __enter__(self) -> MathVerifyJudge:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop(kill=exc_type is not None)  # on Ctrl-C or an error, do not wait for a busy worker

    def judge_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Verdict per ``(generation, ground_truth)``: wrong beyond the caps, on timeout or on error."""
        verdicts = [False] * len(pairs)
        todo = [i for i, (gen, truth) in enumerate(pairs) if within_caps(gen) and within_caps(truth)]
        while todo:
            batch, todo = todo[:_BATCH_SIZE], todo[_BATCH_SIZE:]
            done = self._run_batch([pairs[i] for i in batch])
            for index, verdict in zip(batch, done, strict=False):  # done stops at a timeout
                verdicts[index] = verdict
            todo = batch[len(done) + 1 :] + todo  # after a timeout: the rest of the batch again
        return verdicts

    def _run_batch(self, batch: list[tuple[str, str]]) -> list[bool]:
        """Verdicts of ``batch`` up to the first item that timed out or crashed (that one is wrong)."""
        requests, replies = self._worker()
        requests.send(batch)
        verdicts: list[bool] = []
        for _ in batch:
            try:
                if not replies.poll(self.timeout_s):
                    raise TimeoutError
                verdicts.append(bool(replies.recv()))
            except (TimeoutError, EOFError, OSError):
                self._stop(kill=True)
                self.restarts += 1
                break
        return verdicts

    def _worker(self) -> tuple[Connection, Connection]:
        """The running worker's request and reply connections, starting a worker if needed."""
        if self._requests and self._replies and self._process and self._process.poll() is None:
            return self._requests, self._replies
        self._stop(kill=True)
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        # A fresh interpreter on the parent's sys.path (unlike multiprocessing's spawn, it does not
        # re-run the caller's __main__, so scripts without an ``if __name__`` guard work too).
        code = f"import sys; sys.path[:] = {sys.path!r}; from {__name__} import _serve; _serve"
        self._process = subprocess.Popen(
            [sys.executable, "-c", f"{code}({request_read}, {reply_write})"],
            stdin=subprocess.DEVNULL,
            pass_fds=(request_read, reply_write),
        )
        os.close(request_read)
        os.close(reply_write)
        self._requests = Connection(request_write, readable=False)
        self._replies = Connection(reply_read, writable=False)
        try:
            ready = self._replies.poll(_START_TIMEOUT_S) and self._replies.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._stop(kill=True)
            raise RuntimeError(
                f"math_verify worker did not start within {_START_TIMEOUT_S:.0f} s "
                "(is the 'math-verify' package installed?)"
            )
        return self._requests, self._replies

    def _stop(self, kill: bool) -> None:
        """End the worker: ask it to exit (or kill it) and reap it, so that no zombie is left."""
        process, requests, replies = self._process, self._requests, self._replies
        self._process = self._requests = self._replies = None
        if requests is not None and not kill:
            try:
                requests.send(None)
            except OSError:
                kill = True
        for conn in (requests, replies):
            if conn is not None:
                conn.close()
        if process is None:
            return
        if not kill:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        process.kill()  # a no-op once it has exited
        process.wait()

    def close(self) -> None:
        """Stop the worker; the judge can still be used (a new worker starts on demand)."""
        self._stop(kill=False)
