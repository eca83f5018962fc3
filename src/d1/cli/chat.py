"""`d1 chat --model_path M`: a multi-turn terminal chat with a native (LLaDA or Dream) model that shows each
answer being denoised in place, then the steps taken and tokens/s. `--no-live` prints only the answers (for
pipes); without a terminal or with NO_COLOR the output is plain. Ctrl-C while an answer is decoding drops that
answer and returns to the prompt; Ctrl-D (end of input) exits."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from d1.diffusion.sampling import CACHES, REMASKING, UNMASKS, check_block_schedule, generate
from d1.diffusion.trace import Trace
from d1.utils import check_counts

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="d1 chat", description=__doc__)
    parser.add_argument("--model_path", required=True, help="Model folder or Hub name (native LLaDA or Dream).")
    parser.add_argument("--system_prompt", default=None, help="A system message opening the conversation.")
    parser.add_argument("--gen_length", type=int, default=128, help="Generated tokens per answer.")
    parser.add_argument("--block_length", type=int, default=32, help="Semi-autoregressive block length.")
    parser.add_argument("--steps", type=int, default=None, help="Model calls; default gen_length/2.")
    parser.add_argument("--temperature", type=float, default=0.0, help="Sampling temperature; 0 = greedy.")
    parser.add_argument("--remasking", default="low_confidence", choices=REMASKING)
    parser.add_argument("--cfg_scale", type=float, default=0.0, help="Classifier-free guidance; 0 = off.")
    parser.add_argument("--cache", default=None, choices=[c for c in CACHES if c], help="Block KV cache.")
    parser.add_argument("--unmask", default="schedule", choices=UNMASKS, help="Parallel decoding rule.")
    parser.add_argument("--threshold", type=float, default=0.9, help="unmask=threshold: confidence needed.")
    parser.add_argument("--factor", type=float, default=1.0, help="unmask=factor: Fast-dLLM's factor.")
    parser.add_argument("--no_early_stop", action="store_true", help="Decode every block even after EOS.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling noise.")
    parser.add_argument("--dtype", default="auto", help="Weights dtype: auto, bfloat16, float16, float32.")
    parser.add_argument("--no-live", "--no_live", dest="live", action="store_false",
                        help="Print only each answer, no live denoising view.")  # fmt: skip
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = max(args.gen_length // 2, 1)
    return args


def check_args(args: argparse.Namespace) -> None:
    """The sampler settings, checked before the model loads (the same checks `generate` makes)."""
    from d1.hub import check_local_or_hub

    check_counts({f"--{name}": getattr(args, name) for name in ("gen_length", "block_length", "steps")})
    names = ("--gen_length", "--block_length", "--steps")
    check_block_schedule(args.gen_length, args.block_length, args.steps, names)
    if not 0 <= args.temperature < float("inf") or not 0 <= args.cfg_scale < float("inf"):
        raise ValueError(f"--temperature={args.temperature} and --cfg_scale={args.cfg_scale} must be >= 0.")
    check_local_or_hub(args.model_path, "--model_path")


def prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The conversation as the model's prompt: its chat template, else plain "Role: text" turns."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    turns = [f"{PLAIN_ROLES[m['role']]}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


class Chat:
    """One conversation: the model, its settings and the messages so far."""

    def __init__(self, args: argparse.Namespace, console: Any):
        import torch

        from d1.models.loading import load_config, load_model, load_tokenizer, resolve_mask_token_id

        self.args, self.console = args, console
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

    def answer(self, question: str) -> str:
        """Generate the reply to `question` (shown live when asked) and add both turns to the conversation."""
        import torch
        from rich.live import Live

        from d1.viz.live import denoising_text

        messages = [*self.messages, {"role": "user", "content": question}]
        prompt = prompt_text(self.tokenizer, messages)
        encoded = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        prompt_ids = encoded["input_ids"].to(self.model.device)
        args = self.args
        pieces: list[str | None] = [None] * args.gen_length
        confidence: dict[int, float] = {}
        hidden: set[int] = set()

        def redraw(trace: Trace) -> None:
            step = trace.rows[0].steps[-1]
            for position, token, value in zip(step.positions, step.tokens, step.confidences, strict=True):
                pieces[position], confidence[position] = self.tokenizer.decode([token]), value
                if token in self.special:
                    hidden.add(position)
            live.update(denoising_text(pieces, confidence, set(step.positions), hidden), refresh=True)

        show = args.live and self.console.is_terminal and not self.console.is_dumb_terminal
        eos_id = self.tokenizer.eos_token_id
        stats: dict[str, int] = {}
        began = time.perf_counter()
        display = Live(console=self.console, transient=True, auto_refresh=False) if show else _Nothing()
        with display as live:
            output = generate(
                self.model, prompt_ids, gen_length=args.gen_length, block_length=args.block_length,
                steps=args.steps, temperature=args.temperature, remasking=args.remasking,
                cfg_scale=args.cfg_scale, cache=args.cache, unmask=args.unmask, threshold=args.threshold,
                factor=args.factor, early_stop=not args.no_early_stop and eos_id is not None,
                eos_token_id=eos_id, generator=self.generator, stats=stats,
                trace=Trace(on_step=redraw) if show else None,
            )  # fmt: skip
        seconds = time.perf_counter() - began
        completion = output[0, prompt_ids.shape[1] :]
        reply = self.tokenizer.decode(completion, skip_special_tokens=True).strip()
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


class _Nothing:
    """A context manager standing in for `Live` when nothing is shown live."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: list[str]) -> int:
    from rich.console import Console

    args = parse_args(argv)
    check_args(args)
    from transformers.utils import logging as transformers_logging

    console = Console(highlight=False)
    interactive = sys.stdin.isatty()

    transformers_logging.disable_progress_bar()
    chat = Chat(args, console)
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
