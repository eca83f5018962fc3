"""Which update on fresh Sudoku rollouts raises held-out accuracy? Update rules side by side, same model start.

    python benchmarks/rl_update_rules.py --model runs/demo/models/sft --data runs/demo/data [--rollouts 20]

Every rule starts from the same checkpoint with a fresh AdamW and sees the same prompts in the same order
(`--prompts` puzzles per rollout, `--num_generations` completions each, `--num_iterations` updates per
rollout, the demo's RL settings by default). Rules:
  sft_truth    masked SFT on the batch's ground-truth solutions (a control: what plain supervision does)
  rejection    masked SFT on the rollouts that solve their puzzle (reward 1; rejection-sampling fine-tuning)
  grpo         diffu-GRPO's loss (advantage = reward - group mean), log-probs by `--logp_estimator`
  grpo_solved  diffu-GRPO's loss with advantage 1 for solved rollouts, 0 otherwise: rejection sampling's
               selection scored by `--logp_estimator` (does the estimate itself cost accuracy?)
Prints held-out accuracy (greedy, cells % and puzzles solved %) every `--eval_every` rollouts, the mean
rollout reward since the last row and seconds per rollout. Exploratory: numbers vary with the seed.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from d1.diffusion.likelihood import per_token_logps
from d1.diffusion.losses import IGNORE_INDEX, grpo_loss, masked_sft_loss
from d1.diffusion.masking import noise_completion
from d1.diffusion.sampling import generate
from d1.models.loading import load_model, load_tokenizer
from d1.rl.advantages import group_advantages
from d1.rl.rollout import completion_mask, encode_prompts
from d1.tasks.base import read_records
from d1.tasks.sudoku import sudoku_question, sudoku_reward

RULES = ("sft_truth", "rejection", "grpo", "grpo_solved")


class Bench:
    """The shared pieces: tokenizer, data, rollouts and held-out scoring for one model copy."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tokenizer = load_tokenizer(args.model)
        self.train = read_records(Path(args.data) / "rl.csv")
        self.validation = read_records(Path(args.data) / "validation.csv")

    def prompts(self, rows: list[dict], copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        chats = [[{"role": "user", "content": sudoku_question(row["Puzzle"])}] for row in rows]
        texts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats
        ]
        encoded = encode_prompts(self.tokenizer, [t for t in texts for _ in range(copies)], 512)
        return encoded.input_ids.to(self.args.device), encoded.attention_mask.to(self.args.device)

    @torch.no_grad()
    def rollout(self, model, rows: list[dict], copies: int, temperature: float, seed: int):
        """(sequences, prompt length, attention mask, cell rewards) for `copies` completions of each row."""
        model.eval()
        ids, mask = self.prompts(rows, copies)
        a = self.args
        out = generate(model, ids, attention_mask=mask, gen_length=a.gen_length, block_length=a.gen_length,
                       steps=a.diffusion_steps, temperature=temperature,
                       generator=torch.Generator().manual_seed(seed))  # fmt: skip
        texts = self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        targets = [row for row in rows for _ in range(copies)]
        rewards = torch.tensor(
            [sudoku_reward(t, r["Puzzle"], r["Solution"]) for t, r in zip(texts, targets, strict=True)],
            device=out.device,
        )
        full_mask = torch.cat([mask, torch.ones_like(out[:, ids.shape[1] :])], dim=1)
        return out, ids.shape[1], full_mask, rewards

    def held_out(self, model) -> tuple[float, float]:
        _, _, _, rewards = self.rollout(model, self.validation, 1, 0.0, 0)
        return 100 * rewards.mean().item(), 100 * (rewards == 1).float().mean().item()

    def truth(self, rows: list[dict]) -> tuple[torch.Tensor, int]:
        """Prompt + the d1-format ground-truth completion (chat template, EOS padding to gen_length)."""
        ids, _ = self.prompts(rows, 1)
        tok, length, tails = self.tokenizer, self.args.gen_length, []
        for row in rows:
            chat = [{"role": "user", "content": sudoku_question(row["Puzzle"])}]
            answer = f"<reasoning>\n</reasoning>\n<answer>\n{row['Solution']}\n</answer>"
            prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            full = tok.apply_chat_template([*chat, {"role": "assistant", "content": answer}], tokenize=False)
            tail = tok(full[len(prompt) :], add_special_tokens=False).input_ids
            tails.append((tail + [tok.eos_token_id] * length)[:length])
        return torch.cat([ids, torch.tensor(tails, device=ids.device)], dim=1), ids.shape[1]


def sft_update(model, ids: torch.Tensor, prompt_length: int, rows: torch.Tensor, seed: int) -> torch.Tensor:
    """LLaDA's masked SFT loss on the sequences selected by the boolean `rows`."""
    ids = ids[rows]
    noisy, masked, t = noise_completion(
        ids, torch.full((len(ids),), prompt_length, device=ids.device), model.config.mask_token_id,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    labels = torch.where(masked, ids, IGNORE_INDEX)
    return masked_sft_loss(model(noisy).logits, labels, t, ids[:, prompt_length:].numel())[0]


def rule_loss(bench: Bench, model, rule: str, rows: list[dict], rollout: tuple, step: int):
    """The loss of inner update i for this rollout under `rule`, or None when the rule has nothing to learn."""
    a = bench.args
    ids, plen, mask, reward = rollout
    if rule == "sft_truth":
        truth, tlen = bench.truth(rows)
        everything = torch.ones(len(rows), dtype=torch.bool)
        return lambda i: sft_update(model, truth, tlen, everything, step * 100 + i)
    if rule == "rejection":
        return (
            (lambda i: sft_update(model, ids, plen, reward == 1, step * 100 + i))
            if (reward == 1).any()
            else None
        )
    solved = (reward == 1).float()
    scores = {"cells": reward, "solved": solved, "cells+solved": reward + solved}[a.reward]
    advantages, _ = group_advantages(scores, a.num_generations, a.scale_rewards, a.negative_advantage_scale)
    if rule == "grpo_solved":
        advantages = solved
    cmask = completion_mask(ids[:, plen:], bench.tokenizer.eos_token_id)

    def logps(i: int) -> torch.Tensor:  # iteration i's prompt mask, shared by old and new log-probs
        generator = torch.Generator().manual_seed(step * 100 + i)
        return per_token_logps(model, ids, completion_length=a.gen_length, p_mask_prompt=a.p_mask_prompt,
                               attention_mask=mask, generator=generator, estimator=a.logp_estimator)  # fmt: skip

    with torch.no_grad():
        old = [logps(i) for i in range(a.num_iterations)]
    return lambda i: grpo_loss(
        logps(i), old[i], None, advantages, cmask, a.epsilon, 0.0, a.loss_normalization
    )[0]


def run_rule(bench: Bench, base, rule: str) -> Iterator[tuple[int, float, float, float, float]]:
    """(rollouts done, held-out cells %, solved %, mean rollout reward, s per rollout + updates), every eval_every."""
    a = bench.args
    model = copy.deepcopy(base).to(a.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
    order = torch.Generator().manual_seed(a.seed)
    yield (0, *bench.held_out(model), float("nan"), float("nan"))
    rewards, seconds = [], 0.0
    for step in range(1, a.rollouts + 1):
        picks = torch.randint(len(bench.train), (a.prompts,), generator=order).tolist()
        rows = [bench.train[i] for i in picks]
        start = time.perf_counter()
        rollout = bench.rollout(model, rows, a.num_generations, a.temperature, 10_000 + step)
        rewards.append(rollout[3].mean().item())
        loss = rule_loss(bench, model, rule, rows, rollout, step)
        model.train()
        for i in range(a.num_iterations if loss else 0):
            loss(i).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.2)
            optimizer.step()
            optimizer.zero_grad()
        seconds += time.perf_counter() - start
        if step % a.eval_every == 0:
            yield (step, *bench.held_out(model), sum(rewards) / len(rewards), seconds / step)
            rewards = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an SFT checkpoint of the demo (a d1/LLaDA folder)")
    parser.add_argument(
        "--data", required=True, help="a folder with rl.csv and validation.csv (d1 demo's data/)"
    )
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--eval_every", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--num_iterations", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--gen_length", type=int, default=28)
    parser.add_argument("--diffusion_steps", type=int, default=14)
    parser.add_argument("--logp_estimator", choices=("one_step", "coupled"), default="one_step")
    parser.add_argument(
        "--reward", choices=("cells", "solved", "cells+solved"), default="cells",
        help="what the grpo rules' advantages score: d1's fraction of empty cells right, or 1 if solved",
    )  # fmt: skip
    parser.add_argument("--scale_rewards", choices=("none", "group"), default="none")
    parser.add_argument("--negative_advantage_scale", type=float, default=1.0)
    parser.add_argument("--epsilon", type=float, default=0.5)
    parser.add_argument("--p_mask_prompt", type=float, default=0.15)
    parser.add_argument("--loss_normalization", choices=("token", "sequence"), default="token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (numbers differ slightly between them)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    bench = Bench(args)
    base = load_model(args.model, dtype="float32")
    options = ("lr", "prompts", "num_generations", "num_iterations", "temperature", "logp_estimator", "reward",
               "scale_rewards", "negative_advantage_scale", "epsilon", "p_mask_prompt", "loss_normalization",
               "seed", "device")  # fmt: skip
    print(f"model {args.model}; " + ", ".join(f"{k} {getattr(args, k)}" for k in options) + "\n")
    print("| rule | rollouts | held-out cells % | solved % | rollout reward | s per rollout |")
    print("|---|---|---|---|---|---|")
    for rule in args.rules:
        for step, cells, solved, reward, seconds in run_rule(bench, base, rule):
            print(
                f"| {rule} | {step} | {cells:.1f} | {solved:.1f} | {reward:.3f} | {seconds:.1f} |", flush=True
            )


if __name__ == "__main__":
    main()
