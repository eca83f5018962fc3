"""`DiffuGRPOTrainer`: diffu-GRPO on top of `transformers.Trainer`'s public extension points.

Overridden: `get_train_dataloader` (prompt groups repeated for the inner updates), `training_step` (a rollout
every `num_iterations` steps, then reuse), `compute_loss` (one-pass log-probs under this iteration's prompt
mask, clipped objective with KL), `evaluate` (accuracy on held-out training items) and `log`; callbacks add
each rank's rollouts to every checkpoint and mark it complete (`CompleteCheckpointsCallback`). Optimizers,
schedulers, accelerate/DeepSpeed/FSDP, LoRA, checkpointing and resume stay the Trainer's.
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

from d1.cluster import CompleteCheckpointsCallback
from d1.diffusion.likelihood import ElboTerms, block_elbo_terms, elbo_terms, per_token_logps
from d1.diffusion.losses import OBJECTIVE_NEEDS, espo_loss, grpo_loss, spg_loss, spg_negative_value, wd1_loss
from d1.diffusion.samplers import SamplerCall, sample
from d1.diffusion.trace import Trace
from d1.evaluation.generation import generate_answers
from d1.rl.advantages import combine_rewards, group_advantages, learning_rows
from d1.rl.config import DiffuGRPOConfig
from d1.rl.inpaint import hint_canvas, hint_fractions, replace_rows, zero_signal_groups
from d1.rl.rollout import RewardError, completion_mask, encode_prompts, score_completions
from d1.rl.sampler import RepeatSampler
from d1.rl.sharding import all_ranks_done, gathered_for_generation, sharding_kind
from d1.tasks import Task
from d1.utils import BEST_CHECKPOINT_NAME, derive_seed, say, write_atomic, write_json_atomic

BUFFER_FILE = "rollout_buffer.pt"


def _rows(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def padded_shard(items: list[Any], rank: int, world: int, batch_size: int) -> tuple[list[Any], int]:
    """This rank's items (rank, rank + world, ...) and their count, padded with copies of items[0] so that
    every rank runs as many generation batches as rank 0 (the longest shard): under sharded weights each
    forward pass is a collective. The padding fills a batch of its own, so the real items' batches are
    those of the unpadded run."""
    shard = items[rank::world]
    batches = -(-len(items[0::world]) // batch_size)
    real = len(shard)
    if -(-real // batch_size) < batches:
        shard = shard + [items[0]] * ((batches - 1) * batch_size + 1 - real)
    return shard, real


class DiffuGRPOTrainer(Trainer):
    """diffu-GRPO (d1): rollouts with the diffusion sampler, verifiable rewards, group-relative advantages,
    `num_iterations` inner updates per rollout with one-pass log-probabilities."""

    loss_is_scaled_for_ga = False  # per-micro-batch mean loss: the Trainer divides by accumulation steps

    def __init__(
        self,
        model: PreTrainedModel,
        args: DiffuGRPOConfig,
        task: Task,
        reward_funcs: Sequence[Callable[..., list]],
        reward_weights: Sequence[float],
        train_dataset: list[dict[str, Any]],
        processing_class: PreTrainedTokenizerBase,
        eval_dataset: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ):
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            data_collator=_rows,
            **kwargs,
        )
        self.task = task
        self.reward_funcs = list(reward_funcs)
        self.reward_weights = torch.tensor(list(reward_weights), dtype=torch.float32)
        self.rollout_buffer: dict[int, dict[str, Any]] = {}
        self._resume_from: str | None = None
        self._micro_step = 0
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._best: dict[str, Any] | None = None
        self._last_log_step = 0
        config = self.accelerator.unwrap_model(model).config
        self.mask_token_id = int(config.mask_token_id)
        self.eos_token_id = int(processing_class.eos_token_id)
        self.sync_done = all_ranks_done if sharding_kind(self.accelerator) else None
        self.rollout_options = args.rollout_options(config)
        self.validation_options = args.validation_options(config)
        if args.rollout_order == "left_to_right":  # JustGRPO: one token a step, in order
            self.rollout_options = replace(self.rollout_options, block_length=1, diffusion_steps=args.gen_length)
        self.ref_model = None
        if args.beta > 0 and not getattr(
            model, "peft_config", None
        ):  # LoRA uses the disabled adapter instead
            self.ref_model = copy.deepcopy(self.accelerator.unwrap_model(model)).eval().requires_grad_(False)
        self.add_callback(CompleteCheckpointsCallback(self.args, self.save_resume_state))

    # ----- data -----
    def get_train_dataloader(self) -> DataLoader:
        """Each prompt `num_generations` times, one step's prompts repeated `num_iterations` times, sharded by
        accelerate so that every group sits inside one global micro-batch."""
        args = self.args
        per_step = (
            args.per_device_train_batch_size
            * self.accelerator.num_processes
            * args.gradient_accumulation_steps
        )
        sampler = RepeatSampler(
            len(self.train_dataset),
            args.num_generations,
            per_step // args.num_generations,
            args.num_iterations,
            args.seed,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_size=args.per_device_train_batch_size,
            sampler=sampler,
            collate_fn=_rows,
        )
        return self.accelerator.prepare(loader)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        self._resume_from = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # ----- rollout -----
    def _generator(self, device: torch.device, *parts: Any) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(derive_seed(self.args.seed, *parts))

    def _mask_seed_parts(self, rollout_step: int, micro: int, iteration: int) -> tuple:
        rank = self.accelerator.process_index
        return (
            ("mask", rollout_step, micro, iteration, rank)
            if self.args.random_masking
            else ("mask-fixed", rank)
        )

    def _estimate_inputs(self, batch: dict[str, Any], iteration: int) -> dict[str, Any]:
        """The keyword arguments every log-likelihood estimate of this batch and iteration shares (its masks
        come from a generator seeded by rollout, micro-batch, iteration and rank)."""
        ids = batch["input_ids"]
        generator = self._generator(
            ids.device, *self._mask_seed_parts(batch["rollout_step"], batch["micro"], iteration)
        )
        return {
            "completion_length": batch["completion_mask"].shape[1],
            "mask_token_id": self.mask_token_id,
            "p_mask_prompt": self.args.p_mask_prompt,
            "generator": generator,
            "attention_mask": batch["attention_mask"],
            "mc": self.args.mc_options(),
        }

    def _logps(self, model: Any, batch: dict[str, Any], iteration: int) -> torch.Tensor:
        """Per-token log-likelihood estimates [B, T] with `logp_estimator` (left_to_right: at the rollout
        temperature, as JustGRPO scores its samples; the block estimators on the rollout sampler's blocks,
        trajectory on the rollout's recorded steps)."""
        return per_token_logps(
            model,
            batch["input_ids"],
            estimator=self.args.logp_estimator,
            temperature=self.args.temperature if self.args.logp_estimator == "left_to_right" else 1.0,
            block_length=getattr(self.rollout_options, "block_length", 0),
            steps=batch.get("steps"),
            shrinkage=self.args.shrinkage,
            **self._estimate_inputs(batch, iteration),
        )

    def _every_iteration(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """Log-prob estimates [mu, B, T] under every iteration's masks; the trajectory's draw none, so they are
        computed once and shared."""
        if self.args.logp_estimator == "trajectory":
            return self._logps(model, batch, 0).expand(self.args.num_iterations, -1, -1)
        return torch.stack([self._logps(model, batch, i) for i in range(self.args.num_iterations)])

    def _elbo_terms(self, model: Any, batch: dict[str, Any], iteration: int) -> ElboTerms:
        """The mc_elbo (or block_elbo) samples themselves, for SPG's lower and upper bounds."""
        inputs = self._estimate_inputs(batch, iteration)
        if self.args.logp_estimator == "block_elbo":
            del inputs["p_mask_prompt"]  # the block ELBO never masks the prompt
            return block_elbo_terms(
                model, batch["input_ids"], block_length=self.rollout_options.block_length, **inputs
            )
        return elbo_terms(model, batch["input_ids"], **inputs)

    @torch.no_grad()
    def _rollout(self, unwrapped: Any, rows: list[dict[str, Any]], micro: int) -> dict[str, Any]:
        """Generate, reward, compute advantages and the old/reference log-probs for every iteration's mask,
        with `unwrapped` from `gathered_for_generation`."""
        args, tokenizer, device = self.args, self.processing_class, self.accelerator.device
        rollout_step = self.state.global_step
        start = time.perf_counter()
        texts = [
            tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
            for r in rows
        ]
        prompts = encode_prompts(tokenizer, texts, args.max_prompt_length)
        if prompts.truncated:
            say(
                f"warning: {prompts.truncated} prompt(s) longer than max_prompt_length={args.max_prompt_length} "
                "were cut from the left"
            )
        self._metrics["prompts_truncated"].append(prompts.truncated)
        prompt_ids, prompt_mask = prompts.input_ids.to(device), prompts.attention_mask.to(device)
        generator = self._generator(device, "rollout", rollout_step, micro, self.accelerator.process_index)
        traces: list[Trace] | None = [] if args.logp_estimator == "trajectory" else None
        completion_ids = self._sample(unwrapped, prompt_ids, prompt_mask, generator, traces=traces)
        completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        per_func = self._score(rows, completions, rollout_step)
        rewards = combine_rewards(per_func, self.reward_weights)
        all_rewards = self.accelerator.gather(rewards.to(device)).float().cpu()
        all_per_func = self.accelerator.gather(per_func.to(device)).float().cpu()
        if args.zero_signal_groups == "inpaint":
            completion_ids, all_rewards, all_per_func = self._inpaint(
                unwrapped, rows, prompt_ids, prompt_mask, completion_ids, all_rewards, all_per_func, micro
            )
            completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        mask = completion_mask(completion_ids, self.eos_token_id)
        self._metrics["time/rollout"].append(time.perf_counter() - start)
        advantages, stats = group_advantages(
            all_rewards, args.num_generations, args.scale_rewards, args.negative_advantage_scale
        )
        rank, size = self.accelerator.process_index, len(rows)
        rewards = all_rewards[rank * size : (rank + 1) * size]
        for key, value in stats.items():
            self._metrics[key].append(value)
        for j, func in enumerate(self.reward_funcs):
            self._metrics[f"rewards/{func.__name__}"].append(torch.nanmean(all_per_func[:, j]).item())
        self._metrics["completion_length"].append(mask.sum(1).float().mean().item())
        self._log_samples(texts, completions, rewards)

        start = time.perf_counter()
        batch = {
            "input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
            "attention_mask": torch.cat([prompt_mask, torch.ones_like(completion_ids)], dim=1),
            "completion_mask": mask,
            "advantages": advantages[rank * size : (rank + 1) * size].to(device),
            "rollout_step": rollout_step,
            "micro": micro,
        }
        if traces is not None:
            self._add_trajectory(batch, traces, prompt_ids.shape[1])
        needs = OBJECTIVE_NEEDS[args.objective]
        if args.beta == 0 and needs.row_separable:  # rows with advantage 0 cannot move the loss: skip them
            full = self._normalizer(mask)
            keep = learning_rows(batch["advantages"])
            batch = {k: v[keep] if torch.is_tensor(v) else v for k, v in batch.items()}
            batch["normalizer"] = float(full)
        if args.num_iterations > 1 and needs.needs_old_logps:
            batch["old_logps"] = self._every_iteration(unwrapped, batch)
        if args.beta > 0:
            with self._reference(unwrapped) as ref:
                batch["ref_logps"] = self._every_iteration(ref, batch)
        self._metrics["time/old_logps"].append(time.perf_counter() - start)
        return batch

    @staticmethod
    def _add_trajectory(batch: dict[str, Any], traces: list[Trace], prompt_length: int) -> None:
        """TraceRL's inputs from the rollout's traces: `steps` [N, T], the step that committed each completion
        token (-1: none, early-stop fills), and the completion as committed (the sampler writes EOS over what it
        committed after the first EOS; those tokens were the canvas the later steps saw, so the trajectory's
        likelihood needs them; the completion mask, ending at the first EOS, is unchanged)."""
        steps, tokens = (torch.cat(parts) for parts in zip(*(trace.committed() for trace in traces), strict=True))
        device = batch["input_ids"].device
        completion = batch["input_ids"][:, prompt_length:]
        tokens = tokens.to(device)
        batch["input_ids"][:, prompt_length:] = torch.where(tokens >= 0, tokens, completion)
        batch["steps"] = steps.to(device)

    def _sample(
        self,
        unwrapped: Any,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        generator: torch.Generator,
        prefill: torch.Tensor | None = None,
        traces: list[Trace] | None = None,
    ) -> torch.Tensor:
        """Completion ids [N, gen_length] in batches of generation_batch_size, with the rollout sampler's options
        (left_to_right: one token per step, in order) and `prefill`'s tokens fixed; each batch's `Trace` appended
        to `traces` when given."""
        args = self.args
        outputs, passes = [], []
        for lo in range(0, len(prompt_ids), args.generation_batch_size):
            hi = lo + args.generation_batch_size
            call = SamplerCall(
                attention_mask=prompt_mask[lo:hi],
                generator=generator,
                mask_token_id=self.mask_token_id,
                sync_done=self.sync_done,
                prefill=None if prefill is None else prefill[lo:hi],
                trace=None if traces is None else Trace(),
                stats={},
            )
            if traces is not None:
                traces.append(call.trace)
            outputs.append(sample(unwrapped, prompt_ids[lo:hi], self.rollout_options, call))
            passes.append(call.stats["forward_passes"])
        if prefill is None:  # rollouts, not inpainting's hinted regenerations
            # d1 #25's symptom of fast rollouts in RL: ever more tokens committed by each forward pass
            self._metrics["rollout/forward_passes"].append(sum(passes) / len(passes))
            self._metrics["rollout/tokens_per_pass"].append(args.gen_length * len(passes) / sum(passes))
        return torch.cat(outputs)[:, prompt_ids.shape[1] :]

    def _score(self, rows: list[dict[str, Any]], completions: list[str], step: int) -> torch.Tensor:
        """Rewards [N, F] of each reward function; a raising reward function saves the model first."""
        columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
        try:
            return score_completions(self.reward_funcs, [r["prompt"] for r in rows], completions, columns)
        except RewardError:
            self.save_model(str(Path(self.args.output_dir) / f"checkpoint-{step}-reward-error"))
            raise

    def _inpaint(
        self,
        unwrapped: Any,
        rows: list[dict[str, Any]],
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        all_rewards: torch.Tensor,
        all_per_func: torch.Tensor,
        micro: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """IGPO: re-generate the rows of zero-signal groups with chunks of the task's reference solution fixed
        in place; up to inpaint_max_replacements hinted rows that beat the group's reward replace its first
        rows. Groups may span processes, so the hinted rows are gathered and every process applies the same
        replacements. Returns this process's completion ids and the updated gathered rewards."""
        args, device = self.args, self.accelerator.device
        rank, size, step = self.accelerator.process_index, len(rows), self.state.global_step
        zero = zero_signal_groups(all_rewards, args.num_generations)
        self._metrics["inpaint/zero_signal_groups"].append(zero.float().mean().item())
        if not zero.any():
            return completion_ids, all_rewards, all_per_func
        shared = torch.Generator().manual_seed(derive_seed(args.seed, "inpaint", step, micro))
        fractions = hint_fractions(len(all_rewards), args.num_generations, *args.inpaint_fraction, shared)
        local = [i for i in range(size) if zero[(rank * size + i) // args.num_generations]]
        chosen = local or ([0] if self.sync_done else [])  # sharded weights: every process generates
        hinted_ids = completion_ids.clone()
        hinted_per_func = torch.full_like(all_per_func[:size], float("nan"))
        if chosen:
            references = [
                self.processing_class(self.task.reference_completion(rows[i]), add_special_tokens=False)["input_ids"]
                for i in chosen
            ]
            prefill = hint_canvas(
                references,
                args.gen_length,
                self.mask_token_id,
                [float(fractions[rank * size + i]) for i in chosen],
                [torch.Generator().manual_seed(derive_seed(args.seed, "hint", step, micro, rank * size + i)) for i in chosen],
                min_chunk_size=args.inpaint_chunk_size[0],
                max_chunk_size=args.inpaint_chunk_size[1],
                free_tail=args.inpaint_free_tail,
            ).to(device)
            index = torch.tensor(chosen, device=device)
            generator = self._generator(device, "inpaint", step, micro, rank)
            generated = self._sample(unwrapped, prompt_ids[index], prompt_mask[index], generator, prefill)
            if local:
                texts = self.processing_class.batch_decode(generated, skip_special_tokens=True)
                hinted_ids[index] = generated
                hinted_per_func[index.cpu()] = self._score([rows[i] for i in local], texts, step)
        all_hinted_ids = self.accelerator.gather(hinted_ids).cpu()
        all_hinted_per_func = self.accelerator.gather(hinted_per_func.to(device)).float().cpu()
        generated = ~all_hinted_per_func.isnan().all(dim=1)
        hinted_rewards = torch.full_like(all_rewards, float("-inf"))
        hinted_rewards[generated] = combine_rewards(all_hinted_per_func[generated], self.reward_weights)
        group_reward = all_rewards.view(-1, args.num_generations)[:, :1].expand(-1, args.num_generations).flatten()
        better = hinted_rewards > group_reward
        source = replace_rows(zero, better, args.inpaint_max_replacements, shared)
        take = source >= 0
        self._metrics["inpaint/rescued_groups"].append(take.view(-1, args.num_generations).any(1).float().mean().item())
        all_rewards, all_per_func = all_rewards.clone(), all_per_func.clone()
        all_rewards[take] = hinted_rewards[source[take]]
        all_per_func[take] = all_hinted_per_func[source[take]]
        mine = source[rank * size : (rank + 1) * size]
        completion_ids = completion_ids.clone()
        completion_ids[mine >= 0] = all_hinted_ids[mine[mine >= 0]].to(device)
        return completion_ids, all_rewards, all_per_func

    @contextmanager
    def _reference(self, unwrapped: Any) -> Iterator[Any]:
        """The reference policy: the frozen copy, or the policy with its LoRA adapter disabled."""
        if self.ref_model is not None:
            yield self.ref_model.to(self.accelerator.device)
        else:
            with unwrapped.disable_adapter():
                yield unwrapped

    def _log_samples(self, prompts: list[str], completions: list[str], rewards: torch.Tensor) -> None:
        every = max(1, math.ceil(self.args.logging_steps))
        if (
            not self.args.log_completions
            or self.state.global_step % every
            or not self.is_world_process_zero()
        ):
            return
        path = Path(self.args.output_dir) / "completions.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for p, c, r in zip(prompts[:4], completions[:4], rewards[:4].tolist(), strict=True):
                f.write(
                    json.dumps({"step": self.state.global_step, "prompt": p, "completion": c, "reward": r})
                    + "\n"
                )
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"step {self.state.global_step}: sample completions", show_lines=True)
        for name in ("completion", "reward"):
            table.add_column(name)
        for c, r in zip(completions[:2], rewards[:2].tolist(), strict=True):
            table.add_row(c[-300:], f"{r:.3f}")
        Console().print(table)

    # ----- training -----
    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        micro = self._micro_step % self.args.gradient_accumulation_steps
        self._micro_step += 1
        iteration = self.state.global_step % self.args.num_iterations
        if iteration == 0:
            with gathered_for_generation(model, self.accelerator) as unwrapped:
                self.rollout_buffer[micro] = self._rollout(unwrapped, inputs, micro)
        elif micro not in self.rollout_buffer:
            self._load_buffer()
        batch = {**self.rollout_buffer[micro], "iteration": iteration}
        start = time.perf_counter()
        loss = super().training_step(model, batch, num_items_in_batch)
        self._metrics["time/update"].append(time.perf_counter() - start)
        return loss

    def save_resume_state(self, folder: Path) -> None:
        """This rank's rollouts, so a run resumed between two inner updates of a rollout continues with exactly
        the same completions, advantages and old log-probs (written to a temporary name, renamed when done)."""
        if self.rollout_buffer:
            path = folder / f"{self.accelerator.process_index}_{BUFFER_FILE}"
            buffer = io.BytesIO()
            torch.save(self.rollout_buffer, buffer)
            write_atomic(path, buffer.getvalue())

    def _load_buffer(self) -> None:
        path = Path(self._resume_from or "") / f"{self.accelerator.process_index}_{BUFFER_FILE}"
        if not path.is_file():
            raise RuntimeError(
                f"Resuming between inner updates needs the rollouts saved with the checkpoint ({path} is missing). "
                "Resume from a checkpoint saved by d1 grpo, or from one at a multiple of num_iterations."
            )
        # loaded on the CPU, then moved: map_location=device fails for the "cpu:N" devices of multi-process CPU runs
        saved = torch.load(path, map_location="cpu", weights_only=False)
        device = self.accelerator.device
        self.rollout_buffer = {
            micro: {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            for micro, batch in saved.items()
        }

    def _normalizer(self, mask: torch.Tensor) -> int:
        """What the objective averages over, counted on the whole batch (before zero-advantage rows go):
        completion tokens (grpo_clip with token normalisation, spg's length weights) or sequences."""
        tokens = self.args.objective == "spg" or (
            self.args.objective == "grpo_clip" and self.args.loss_normalization == "token"
        )
        return int(mask.sum().item()) if tokens else len(mask)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        loss, stats = self._objective(model, inputs, inputs["iteration"])
        for key, value in stats.items():
            self._metrics[key].append(self.accelerator.gather(value.detach()).mean().item())
        return loss

    def _objective(
        self, model: Any, inputs: dict[str, Any], iteration: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The configured objective's loss and stats on this iteration's log-likelihood estimates."""
        args, mask, advantages = self.args, inputs["completion_mask"], inputs["advantages"]
        normalizer = inputs.get("normalizer")
        if args.objective == "spg":
            terms = self._elbo_terms(model, inputs, iteration)
            elbo = terms.elbo_per_token_mean(mask)
            negative = spg_negative_value(elbo, terms.eubo(args.spg_eubo_beta, mask), args.spg_mix_weight)
            return spg_loss(elbo, negative, advantages, mask.sum(1), normalizer)
        logps = self._logps(model, inputs, iteration)
        old = inputs["old_logps"][iteration] if "old_logps" in inputs else logps.detach()
        ref = inputs["ref_logps"][iteration] if "ref_logps" in inputs else None
        if args.objective == "grpo_clip":
            return grpo_loss(
                logps, old, ref, advantages, mask, args.epsilon, args.beta, args.loss_normalization, normalizer
            )
        if args.objective == "espo":  # ELBOs of the whole completion width, as ESPO's code sums them
            return espo_loss(
                logps.sum(1),
                old.sum(1),
                None if ref is None else ref.sum(1),
                advantages,
                logps.shape[1],
                args.epsilon,
                args.epsilon if args.epsilon_high is None else args.epsilon_high,
                args.beta,
                normalizer,
            )
        return wd1_loss((logps * mask).sum(1), advantages, args.num_generations)

    # ----- validation and logging -----
    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> dict:
        """Greedy accuracy on held-out training items (never the test set); records the best step in
        `best_checkpoint.json` and asks the Trainer to save a checkpoint there."""
        items = [self.task.eval_item(r) for r in (eval_dataset or self.eval_dataset or [])]
        args = self.args
        shard, real = padded_shard(
            items, self.accelerator.process_index, self.accelerator.num_processes, args.generation_batch_size
        )
        with gathered_for_generation(self.model_wrapped, self.accelerator) as model:
            was_training = model.training
            model.eval()  # greedy answers without dropout
            try:
                records = generate_answers(
                    model,
                    self.processing_class,
                    self.task,
                    shard,
                    self.validation_options,
                    batch_size=args.generation_batch_size,
                    system_prompt=args.system_prompt,
                    mask_token_id=self.mask_token_id,
                    sync_done=self.sync_done,
                )[:real]
            finally:
                model.train(was_training)
        verdicts = self.task.parse_many(  # one sandbox pool for code tasks
            [r["generations"] for r in records], [r["ground_truth"] for r in records], [r["question"] for r in records]
        )
        counts = torch.tensor(
            [
                sum(v.n_correct for v in verdicts),
                sum(v.n_total for v in verdicts),
                sum(v.correct for v in verdicts),
                len(verdicts),
            ],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        counts = self.accelerator.reduce(counts, reduction="sum").cpu()
        metrics = {
            f"{metric_key_prefix}_accuracy": 100 * counts[0].item() / max(counts[1].item(), 1),
            f"{metric_key_prefix}_solved": 100 * counts[2].item() / max(counts[3].item(), 1),
        }
        step = self.state.global_step
        if self._best is None or metrics[f"{metric_key_prefix}_accuracy"] > self._best["accuracy"]:
            start = step == 0  # the starting model itself: a run that only degrades keeps it
            self._best = {
                "step": step,
                "accuracy": metrics[f"{metric_key_prefix}_accuracy"],
                "checkpoint": args.model_path if start else str(Path(args.output_dir) / f"checkpoint-{step}"),
            }
            self.control.should_save = not start
            if self.is_world_process_zero():
                Path(args.output_dir).mkdir(parents=True, exist_ok=True)
                write_json_atomic(Path(args.output_dir) / BEST_CHECKPOINT_NAME, self._best)
        self.log(metrics)
        # as Trainer.evaluate does: callbacks see the metrics and the pending evaluation is cleared (else the
        # Trainer's end-of-training check evaluates the last step a second time)
        self.control = self.callback_handler.on_evaluate(args, self.state, self.control, metrics)
        return metrics

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds the means of the rollout/loss metrics gathered since the last log."""
        if "loss" in logs:
            steps = max(1, self.state.global_step - self._last_log_step)
            for key, values in self._metrics.items():
                per_step = key.startswith("time/") or key == "prompts_truncated"  # totals per step, not means
                logs[key] = sum(values) / (steps if per_step else len(values))
            self._metrics.clear()
            self._last_log_step = self.state.global_step
        super().log(logs, *args, **kwargs)
