"""`d1 chat` through a pseudo-terminal on the tiny model: scripted turns with the live view, an empty input,
a long answer, Ctrl-C (SIGINT) during decoding back to the prompt without a traceback, exit on Ctrl-D; plain
output for pipes and NO_COLOR; a model without a chat template falls back to plain turns and says so."""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from d1.cli.chat import prompt_text

SMALL = ["--gen_length", "32", "--block_length", "16", "--steps", "8"]
PROMPT = b"you> "
COLOUR = b"\x1b[38;"  # a foreground colour escape (256-colour or truecolor)


class Terminal:
    """`d1 chat ...` on a pseudo-terminal of 24 x 100 characters; `expect` reads until a byte string shows."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        environment = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "24", **(env or {})}
        environment.pop("NO_COLOR", None) if "NO_COLOR" not in (env or {}) else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "d1", "chat", *args],
            stdin=slave, stdout=slave, stderr=slave, env=environment, close_fds=True,
        )  # fmt: skip
        os.close(slave)
        self.output = b""

    def expect(self, needle: bytes, timeout: float = 60) -> bytes:
        """Everything read up to and including the next `needle`."""
        deadline, start = time.monotonic() + timeout, len(self.output)
        while needle not in self.output[start:]:
            ready, _, _ = select.select([self.master], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise TimeoutError(f"{needle!r} not shown within {timeout} s; output so far:\n{self.output!r}")
            try:
                chunk = os.read(self.master, 1 << 16)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise EOFError(f"{needle!r} never shown; output:\n{self.output!r}")
            self.output += chunk
        end = self.output.index(needle, start) + len(needle)
        return self.output[start:end]

    def send(self, text: bytes) -> None:
        os.write(self.master, text)

    def close(self) -> int:
        try:
            return self.process.wait(timeout=30)
        finally:
            os.close(self.master)


def test_scripted_turns_empty_input_long_answer_ctrl_c_and_eof(tiny_model_dir: Path) -> None:
    term = Terminal("--model_path", str(tiny_model_dir), *SMALL)
    try:
        term.expect(PROMPT)
        term.send(b"hello there\n")
        turn = term.expect(PROMPT)
        assert b"8 steps" in turn and b"tokens/s" in turn and COLOUR in turn
        assert "\u2591".encode() in turn  # masked placeholders were drawn while decoding
        term.send(b"\n")  # an empty input: no answer, a new prompt
        assert b"steps" not in term.expect(PROMPT)
        term.send(b"and again\n")
        assert b"8 steps" in term.expect(PROMPT)
        term.send(b"\x04")  # Ctrl-D at an empty line: end of input
        term.expect(b"\n")
        assert term.close() == 0
    finally:
        term.process.kill()
    assert b"Traceback" not in term.output


def test_long_answer_and_ctrl_c_while_decoding(tiny_model_dir: Path) -> None:
    long = ["--gen_length", "1024", "--block_length", "64", "--steps", "1024", "--no_early_stop"]
    term = Terminal("--model_path", str(tiny_model_dir), *long)
    try:
        term.expect(PROMPT)
        term.send(b"tell me a long story\n")
        term.expect("\u2591".encode())  # decoding has started (the live view is up)
        term.process.send_signal(signal.SIGINT)
        assert b"interrupted" in term.expect(PROMPT)
        term.send(b"\x04")
        assert term.close() == 0
    finally:
        term.process.kill()
    assert b"Traceback" not in term.output and b"KeyboardInterrupt" not in term.output


def test_long_answer_is_printed_whole(tiny_model_dir: Path) -> None:
    args = ["--gen_length", "256", "--block_length", "64", "--steps", "32", "--no_early_stop"]
    term = Terminal("--model_path", str(tiny_model_dir), *args)
    try:
        term.expect(PROMPT)
        term.send(b"go on\n")
        turn = term.expect(PROMPT)
        assert b"32 steps" in turn
        term.send(b"\x04")
        assert term.close() == 0
    finally:
        term.process.kill()
    assert b"Traceback" not in term.output


def test_no_color_terminal_gets_plain_output(tiny_model_dir: Path) -> None:
    term = Terminal("--model_path", str(tiny_model_dir), *SMALL, env={"NO_COLOR": "1"})
    try:
        term.expect(PROMPT)
        term.send(b"hello\n")
        turn = term.expect(PROMPT)
        assert b"8 steps" in turn and COLOUR not in turn
        term.send(b"\x04")
        assert term.close() == 0
    finally:
        term.process.kill()


def _chat_pipe(model: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "d1", "chat", "--model_path", str(model), *SMALL, *args]
    return subprocess.run(command, input=text, capture_output=True, text=True, timeout=120)


def test_pipe_prints_only_the_answers(family_model_dir: Path) -> None:
    done = _chat_pipe(family_model_dir, "hello\n\nsecond turn\n", "--no-live")
    assert done.returncode == 0, done.stderr
    assert done.stdout == _chat_pipe(family_model_dir, "hello\nsecond turn\n", "--no-live").stdout  # "" skipped
    assert done.stdout.strip()
    assert "\x1b" not in done.stdout and "steps" not in done.stdout and "you>" not in done.stdout


def test_model_without_chat_template_falls_back_to_plain_turns(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    done = _chat_pipe(model, "hello\n", "--no-live")
    assert done.returncode == 0, done.stderr
    assert "has no chat template; using plain 'User:'/'Assistant:' turns" in done.stderr
    assert done.stdout.strip() and "note:" not in done.stdout  # the answer alone


def test_prompt_text_plain_turns_without_template() -> None:
    class Plain:
        chat_template = None

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert prompt_text(Plain(), messages) == "System: be brief\n\nUser: hi\n\nAssistant:"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sampler", "llada", "--gen_length", "30"], "gen_length=30 must be a multiple of block_length=16"),
        (["--sampler", "llada", "--temperature", "-1"], "temperature=-1.0 must be a finite number >= 0"),
        (["--sampler", "dream", "--block_length", "8"], "block_length=8: option(s) of sampler(s) ['block_diffusion', 'fastdllm_dream', 'llada']"),
        ([], "absent-model': no such file or folder"),
    ],
)
def test_bad_settings_fail_before_loading(tmp_path: Path, args: list[str], message: str) -> None:
    done = _chat_pipe(tmp_path / "absent-model", "", *args)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr
    assert "loading" not in done.stderr  # refused before the model loads


@pytest.mark.parametrize("sampler", [["--sampler", "dream"], ["--sampler", "fastdllm_dream", "--block_length", "8"]])
def test_dream_samplers_chat_live(tiny_dream_dir: Path, sampler: list[str]) -> None:
    """Dream's samplers in the chat: the answer is denoised live from its trace, then the steps are counted."""
    term = Terminal("--model_path", str(tiny_dream_dir), *sampler, "--gen_length", "16", "--steps", "8")
    try:
        term.expect(PROMPT)
        term.send(b"hello there\n")
        turn = term.expect(PROMPT)
        assert re.search(rb"\d+ steps", turn) and "\u2591".encode() in turn
        term.send(b"\x04")
        assert term.close() == 0
    finally:
        term.process.kill()


def test_answer_ends_at_the_first_end_of_turn_token(tiny_model_dir: Path) -> None:
    """<|eot_id|> (LLaDA's end of turn) cuts the answer even where the tokenizer does not call it special."""
    import torch

    from d1.cli.chat import Chat

    chat = Chat.__new__(Chat)
    chat.ends = {5, 9}
    assert chat.turn(torch.tensor([1, 2, 9, 3, 5])).tolist() == [1, 2]
    assert chat.turn(torch.tensor([1, 2, 3])).tolist() == [1, 2, 3]


def test_loading_is_announced(tiny_model_dir: Path) -> None:
    done = _chat_pipe(tiny_model_dir, "hi\n", "--no-live")
    assert done.returncode == 0 and f"loading {tiny_model_dir} ..." in done.stderr
