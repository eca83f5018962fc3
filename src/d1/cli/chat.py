"""`d1 chat --model_path M`: a multi-turn terminal chat with a native (LLaDA or Dream) model that shows each
answer being denoised in place, then the steps taken and tokens/s. `--no-live` prints only the answers (for
pipes); without a terminal or with NO_COLOR the output is plain. Ctrl-C while an answer is decoding drops that
answer and returns to the prompt; Ctrl-D (end of input) exits."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from d1.diffusion.samplers import sampler_arguments, with_default
from d1.diffusion.trace import Trace

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|role_end|>", "<|endoftext|>")
"""Tokens that end an assistant turn in LLaDA's, Qwen2's (Dream's) and LLaDA 2.x's chat formats: an answer is cut
at the first."""


@dataclass
class ChatConfig(sampler_arguments()):
    """Options of `d1 chat`: the model, the conversation, and the sampler options every command shares."""

    ALIASES: ClassVar[dict[str, str]] = {"--steps": "--diffusion_steps", "--no-live": "--no_live"}
    """Older spellings that still work."""

    model_path: str | None = field(
        default=None, metadata={"help": "Model folder or Hub name (native LLaDA or Dream). Required."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "A system message opening the conversation."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling noise."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype: auto, bfloat16, float16, float32."})
    live: bool = field(default=True, metadata={"help": "Show each answer being denoised (--no_live: print only it)."})
    early_stop: bool = with_default(
        "early_stop", True, "On in chat (an answer ends at its EOS; --no_early_stop decodes every block); off in "
        "d1 eval, where d1's exact sampler decodes every block."
    )  # fmt: skip


def parse_args(argv: list[str]) -> ChatConfig:
    from d1.cli.args import parse_config

    return parse_config(ChatConfig, argv, prog="d1 chat")


def check_args(args: ChatConfig) -> Any:
    """The model path and the sampler's options, checked before the model loads; returns the options."""
    from d1.diffusion.samplers import options_from
    from d1.hub import check_local_or_hub
    from d1.models.families import default_sampler
    from d1.models.loading import load_config

    if not args.model_path:
        raise ValueError("--model_path is required: a model folder or Hub name.")
    options = options_from(args, args.sampler) if args.sampler else None  # needs no model
    check_local_or_hub(args.model_path, "--model_path")
    return options or options_from(args, *default_sampler(load_config(args.model_path)))


def prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The conversation as the model's prompt: its chat template, else plain "Role: text" turns."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    turns = [f"{PLAIN_ROLES[m['role']]}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


class Chat:
    """One conversation: the model, its settings and the messages so far."""

    def __init__(self, args: ChatConfig, options: Any, console: Any):
        import torch

        from d1.models.loading import load_config, load_model, load_tokenizer, resolve_mask_token_id

        self.args, self.options, self.console = args, options, console
        self.tokenizer = load_tokenizer(args.model_path)
        mask_id = resolve_mask_token_id(self.tokenizer, load_config(args.model_path))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_model(args.model_path, dtype=args.dtype, device=device, mask_token_id=mask_id)
        self.model = model.eval()
        self.generator = torch.Generator(device=device).manual_seed(args.seed)
        self.messages: list[dict[str, str]] = []
        if args.system_prompt:
            self.messages.append({"role": "system", "content": args.system_prompt})
        self.special = set(self.tokenizer.all_special_ids)
        vocabulary = self.tokenizer.get_vocab()
        ends = {vocabulary[token] for token in END_OF_TURN if token in vocabulary}
        self.ends = ends | ({self.tokenizer.eos_token_id} - {None})

    def answer(self, question: str) -> str:
        """Generate the reply to `question` (shown live when asked) and add both turns to the conversation."""
        import torch
        from rich.live import Live

        from d1.diffusion.samplers import SamplerCall, sample
        from d1.viz.live import denoising_text

        messages = [*self.messages, {"role": "user", "content": question}]
        prompt = prompt_text(self.tokenizer, messages)
        encoded = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        prompt_ids = encoded["input_ids"].to(self.model.device)
        pieces: list[str | None] = [None] * self.options.gen_length
        confidence: dict[int, float] = {}
        hidden: set[int] = set()

        def redraw(trace: Trace) -> None:
            step = trace.rows[0].steps[-1]
            for position, token, value in zip(step.positions, step.tokens, step.confidences, strict=True):
                pieces[position], confidence[position] = self.tokenizer.decode([token]), value
                if token in self.special:
                    hidden.add(position)
            live.update(denoising_text(pieces, confidence, set(step.positions), hidden), refresh=True)

        show = self.args.live and self.console.is_terminal and not self.console.is_dumb_terminal
        stats: dict[str, int] = {}
        began = time.perf_counter()
        display = Live(console=self.console, transient=True, auto_refresh=False) if show else _Nothing()
        with display as live:
            call = SamplerCall(
                generator=self.generator, eos_token_id=self.tokenizer.eos_token_id, stats=stats,
                trace=Trace(on_step=redraw) if show else None,
            )  # fmt: skip
            output = sample(self.model, prompt_ids, self.options, call)
        seconds = time.perf_counter() - began
        completion = output[0, prompt_ids.shape[1] :]
        reply = self.tokenizer.decode(self.turn(completion), skip_special_tokens=True).strip()
        self.messages = [*messages, {"role": "assistant", "content": reply}]
        if not show:
            self.console.print(reply, markup=False, highlight=False)
            return reply
        masked = {p for p, piece in enumerate(pieces) if piece is None}  # early stop's EOS fill
        self.console.print(denoising_text(pieces, confidence, set(), hidden | masked))
        special = torch.tensor(sorted(self.special), device=completion.device)
        tokens = int((~torch.isin(completion, special)).sum())
        self.console.print(
            f"[dim]{stats['steps']} steps, {tokens} tokens in {seconds:.2f} s "
            f"({tokens / max(seconds, 1e-9):.1f} tokens/s)[/dim]"
        )
        return reply

    def turn(self, completion: Any) -> Any:
        """The completion up to its first end-of-turn token (EOS, `END_OF_TURN`): what follows is not
        part of the answer, and those tokens need not be registered as special to be dropped."""
        import torch

        ends = torch.isin(completion, torch.tensor(sorted(self.ends), device=completion.device))
        return completion[: int(ends.int().argmax())] if bool(ends.any()) else completion


class _Nothing:
    """A context manager standing in for `Live` when nothing is shown live."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: list[str]) -> int:
    from rich.console import Console

    args = parse_args(argv)
    options = check_args(args)
    from transformers.utils import logging as transformers_logging

    console = Console(highlight=False)
    interactive = sys.stdin.isatty()

    transformers_logging.disable_progress_bar()
    print(f"loading {args.model_path} ...", file=sys.stderr, flush=True)
    chat = Chat(args, options, console)
    if not getattr(chat.tokenizer, "chat_template", None):
        note = f"note: {args.model_path} has no chat template; using plain 'User:'/'Assistant:' turns."
        print(note, file=sys.stderr)
    if interactive:
        console.print("[dim]d1 chat: type a message; Ctrl-C stops an answer, Ctrl-D exits.[/dim]")
    while True:
        try:
            question = input("you> " if interactive else "")
        except EOFError:
            if interactive:
                console.print()
            return 0
        except KeyboardInterrupt:
            console.print()
            continue
        if not question.strip():
            continue
        try:
            chat.answer(question)
        except KeyboardInterrupt:
            console.print("[dim](interrupted; the answer was dropped)[/dim]")
