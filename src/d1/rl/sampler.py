"""The prompt sampler of diffu-GRPO: groups of `num_generations` copies, repeated for `num_iterations` updates."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class RepeatSampler(Sampler[int]):
    """Indices for the data loader: each prompt `num_generations` times in a row, prompts taken in chunks of
    `prompts_per_step` (one optimizer step's worth across all processes), each chunk repeated
    `repeat_count` (= num_iterations) times so every inner update sees the same prompts. Incomplete chunks
    at the end of an epoch are dropped. Shuffled per epoch from `seed`."""

    def __init__(self, size: int, num_generations: int, prompts_per_step: int, repeat_count: int, seed: int):
        if size < prompts_per_step:
            raise ValueError(
                f"The training set has {size} prompts, fewer than one step needs ({prompts_per_step} = global batch x "
                "gradient_accumulation_steps / num_generations). Add data or lower the batch size."
            )
        self.size, self.num_generations, self.prompts_per_step = size, num_generations, prompts_per_step
        self.repeat_count, self.seed, self.epoch = repeat_count, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(
            self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        ).tolist()
        for start in range(0, self.size - self.prompts_per_step + 1, self.prompts_per_step):
            chunk = order[start : start + self.prompts_per_step]
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.num_generations

    def __len__(self) -> int:
        return (
            (self.size // self.prompts_per_step)
            * self.prompts_per_step
            * self.num_generations
            * self.repeat_count
        )
