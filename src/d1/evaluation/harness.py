"""The lm-evaluation-harness model `d1`: any model `d1.load_model` loads, evaluated by lm-eval's tasks.

Importing this module registers it (`lm_eval.simple_evaluate(model="d1", model_args={...})`; `d1 harness`
imports it). Options (`model_args`): `pretrained`/`model_path`, `checkpoint_path`, `dtype`, `device`,
`batch_size`, `mask_token_id`, `trust_remote_code`, `seed`, `mc_num`, `is_greedy`, `keep_special_tokens`,
`sampler` (default: the model family's) and every option of the registered samplers (`d1.diffusion.samplers`:
the same names and defaults as `d1 eval`'s flags; `steps` is accepted for `diffusion_steps`).

- `generate_until`: prompts left-padded in batches of `batch_size`, the chosen sampler with its options
  (noise seeded per batch exactly as `d1 eval`'s `generate_answers`, so the same prompts and settings give the
  same text), decoded; a request's `max_gen_toks` caps the answer at that many tokens (the diffusion canvas
  stays `gen_length`, the model_args setting, as in LLaDA's harness model); its `until` strings cut the text
  after decoding; special tokens are dropped unless `keep_special_tokens`. Other generation keys of a task
  (temperature, do_sample) are ignored: the sampler settings are the model's.
- `loglikelihood`: the Monte-Carlo ELBO of LLaDA's evaluation (`d1.diffusion.likelihood.elbo_loglikelihood`,
  `mc_num` samples, `batch_size` rows per pass, guidance with `cfg_scale`), seeded per request. Cost: mc_num
  forward passes per choice (2x with guidance); standard error about sd / sqrt(mc_num). `is_greedy` (LLaDA's
  `is_check_greedy`, default off as LLaDA's scripts run it) decodes the continuation from a fully masked one,
  one most-confident token per step, and reports whether that reproduces it; off, it reports False.
- `loglikelihood_rolling` (perplexity tasks) is refused: a masked diffusion model has no left-to-right
  factorisation to roll over, and an ELBO of a whole text is a different quantity.
Single process: run one `d1 harness` per device and split tasks between them.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from d1.diffusion.likelihood import elbo_loglikelihood
from d1.diffusion.samplers import SamplerCall, option_fields, sample
from d1.diffusion.sampling import generate
from d1.evaluation.config import EvalConfig, checkpoint_kind
from d1.evaluation.files import weights_fingerprint
from d1.evaluation.runner import load_eval_model, load_eval_tokenizer
from d1.hub import check_local_or_hub
from d1.utils import derive_seed, mark_set_by_user

SAMPLER_OPTIONS = {"sampler": None, **{name: spec.default for name, (_, spec) in option_fields().items()}}
"""The sampler choice and every registered sampler's options, with the registry's defaults."""

ALIASES = {"steps": "diffusion_steps"}
"""Older spellings of model_args that still work."""

HARNESS_OPTIONS = {
    "pretrained": None,
    "model_path": None,
    "checkpoint_path": "",
    "dtype": "auto",
    "device": None,
    "batch_size": 4,
    "max_batch_size": None,
    "mask_token_id": None,
    "trust_remote_code": False,
    "seed": 1234,
    "mc_num": 128,
    "is_greedy": False,
    "keep_special_tokens": False,
}
"""The model's other options and defaults (`max_batch_size` is lm-eval's, accepted and unused)."""

REFUSED_OUTPUT_TYPES = {
    "loglikelihood_rolling": "perplexity needs a left-to-right factorisation that a masked diffusion model does "
    "not have (and a whole-text ELBO is another quantity)"
}


def _coerce(name: str, value: Any, default: Any, kind: Any = None) -> Any:
    """A model_args value as the option's type `kind` (else its default's; lm-eval parses `k=v` loosely)."""
    if value is None or (default is None and isinstance(value, str) and value.lower() == "none"):
        return None
    target = kind if kind is not None else (type(default) if default is not None else None)
    if target is None or target is str:
        return value
    if target is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be true or false.")
        return value
    try:
        return target(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a {target.__name__}.") from None


def _option_type(kind: Any) -> Any:
    """The plain type of an option annotation (`int | None` -> int)."""
    args = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
    return args[0] if args else kind


def resolve_options(args: dict[str, Any]) -> dict[str, Any]:
    """All options with defaults filled in, each checked by name and type; unknown names are refused naming
    close matches. Runs before any model loads."""
    args = {ALIASES.get(name, name): value for name, value in args.items()}
    known = {**HARNESS_OPTIONS, **SAMPLER_OPTIONS}
    kinds = {name: _option_type(kind) for name, (kind, _) in option_fields().items()}
    unknown = [name for name in args if name not in known]
    if unknown:
        hints = {name: difflib.get_close_matches(name, known, n=2) for name in unknown}
        hint = "; ".join(f"{name}: did you mean {close}?" for name, close in hints.items() if close)
        raise ValueError(
            f"model_args {unknown} are not options of the d1 model: its samplers take "
            f"{sorted(SAMPLER_OPTIONS)}, the model {sorted(HARNESS_OPTIONS)}." + (f" {hint}" if hint else "")
        )
    options = {
        name: _coerce(name, args.get(name, default), default, kinds.get(name)) for name, default in known.items()
    }
    if options["pretrained"] and options["model_path"] and options["pretrained"] != options["model_path"]:
        raise ValueError(
            f"pretrained={options['pretrained']!r} and model_path={options['model_path']!r} disagree; pass one."
        )
    options["model_path"] = options.pop("pretrained") or options["model_path"]
    if not options["model_path"]:
        raise ValueError("model_args needs pretrained=MODEL (or model_path=MODEL): a Hub name or local folder.")
    if options["batch_size"] in ("auto", None) or int(options["batch_size"]) < 1:
        raise ValueError(f"batch_size={options['batch_size']!r} must be a number >= 1 ('auto' is not supported).")
    options["batch_size"] = int(options["batch_size"])
    if options["mc_num"] < 1:
        raise ValueError(f"mc_num={options['mc_num']} must be at least 1.")
    return options


def eval_config(options: dict[str, Any]) -> EvalConfig:
    """The `d1 eval` settings these options mean, so both check and load the same way."""
    shared = {f.name for f in dataclasses.fields(EvalConfig)}
    return EvalConfig(**{name: value for name, value in options.items() if name in shared})


def check_options(args: dict[str, Any]) -> tuple[dict[str, Any], EvalConfig, str]:
    """Every option checked cheaply (no weights read): the resolved options, their `EvalConfig`, the
    checkpoint kind."""
    options = resolve_options(args)
    config = mark_set_by_user(eval_config(options), {ALIASES.get(name, name) for name in args})
    check_local_or_hub(config.model_path, "pretrained")
    kind = checkpoint_kind(config.checkpoint_path)
    config.options()  # the sampler's own checks
    return options, config, kind


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows left-padded to one length, and the attention mask (1 real, 0 pad)."""
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows], device=device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
    return ids, mask


@register_model("d1")
class D1HarnessLM(TemplateLM):
    """lm-eval's view of a masked diffusion LM (see the module docstring for each request type)."""

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        self.options, self.config, kind = check_options(model_args)
        device = self.options["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
        self._device = torch.device(device)
        self.tokenizer, self.mask_token_id, weights = load_eval_tokenizer(self.config, kind)
        adapter = [self.config.checkpoint_path] if kind == "lora" else []
        self.weights_fingerprint = weights_fingerprint(weights, *adapter)
        self.model = load_eval_model(self.config, kind, weights, self.mask_token_id, self._device)
        self.sampler = self.config.options()

    # ------------------------------------------------------------ what lm-eval asks of a model

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The context of an empty-context request: BOS where the tokenizer has one."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids; by default special tokens (BOS) are added unless the text already starts with BOS (a chat
        template's output), as lm-eval asks of `tok_encode`."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The tokenizer's chat template as text (lm-eval's HFLM convention: continue the final message when
        no generation prompt is asked for)."""
        import jinja2

        def render(history: list[dict[str, str]]) -> str:
            return self.tokenizer.apply_chat_template(
                history,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            )

        try:
            return render(chat_history)
        except jinja2.exceptions.TemplateError:  # templates without a system role: drop it, as HFLM does
            return render([message for message in chat_history if message["role"] != "system"])

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Batched, left-padded sampling, each batch's noise seeded as in `generate_answers`."""
        size = self.options["batch_size"]
        outputs: list[str] = []
        for start in tqdm(range(0, len(requests), size), disable=disable_tqdm, desc="d1 generate_until"):
            batch = requests[start : start + size]
            rows = [self.tok_encode(request.args[0]) for request in batch]
            prompt_ids, attention_mask = _left_pad(rows, self.tokenizer.pad_token_id, self._device)
            generator = torch.Generator(device=self._device).manual_seed(derive_seed(self.options["seed"], start))
            call = SamplerCall(
                attention_mask=None if bool(attention_mask.all()) else attention_mask,
                generator=generator,
                mask_token_id=self.mask_token_id,
            )
            output = sample(self.model, prompt_ids, self.sampler, call)
            for request, answer in zip(batch, output[:, prompt_ids.shape[1] :].tolist(), strict=True):
                text = self.finish(answer, request.args[1] or {})
                outputs.append(text)
                self.cache_hook.add_partial("generate_until", request.args, text)
        return outputs

    def finish(self, answer: list[int], gen_kwargs: dict[str, Any]) -> str:
        """Decoded answer: capped at `max_gen_toks` tokens, cut at the first `until` string, special tokens
        dropped unless `keep_special_tokens` (decoded as `d1 eval` does when nothing is cut)."""
        keep = self.options["keep_special_tokens"]
        cap = gen_kwargs.get("max_gen_toks")
        answer = answer[: int(cap)] if cap is not None else answer
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        full = self.tokenizer.decode(answer, skip_special_tokens=False)
        cuts = [full.find(stop) for stop in until if stop and stop in full]
        if not cuts:
            return full if keep else self.tokenizer.decode(answer, skip_special_tokens=True)
        text = full[: min(cuts)]
        if not keep:
            for special in self.tokenizer.all_special_tokens:
                text = text.replace(special, "")
        return text

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any) -> list:
        """(ELBO estimate, is_greedy) per (context, continuation) token pair, seeded by the request's index."""
        results = []
        for index, (pair, context, continuation) in enumerate(tqdm(requests, disable=disable_tqdm)):
            result = self.score(context, continuation, index)
            results.append(result)
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    @torch.no_grad()
    def score(self, context: list[int], continuation: list[int], index: int) -> tuple[float, bool]:
        """The ELBO of `continuation` given `context` and LLaDA's greedy check (empty continuation: (0, True))."""
        if not continuation:
            return 0.0, True
        prompt = torch.tensor(context, device=self._device)
        target = torch.tensor(continuation, device=self._device)
        generator = torch.Generator(device=self._device).manual_seed(derive_seed(self.options["seed"], index))
        value = elbo_loglikelihood(
            self.model,
            prompt,
            target,
            mc_num=self.options["mc_num"],
            batch_size=self.options["batch_size"],
            mask_token_id=self.mask_token_id,
            cfg_scale=self.options["cfg_scale"],
            generator=generator,
        )
        return value, self.options["is_greedy"] and self.decodes_greedily(prompt, target)

    def decodes_greedily(self, prompt: torch.Tensor, target: torch.Tensor) -> bool:
        """LLaDA's greedy check: from the target fully masked, unmask the most confident argmax one token per
        step (one block, len(target) steps); True when that yields the target."""
        length = target.numel()
        output = generate(
            self.model,
            prompt[None],
            gen_length=length,
            block_length=length,
            steps=length,
            temperature=0.0,
            remasking="low_confidence",
            cfg_scale=self.options["cfg_scale"],
            mask_token_id=self.mask_token_id,
        )
        return bool((output[0, prompt.numel() :] == target).all())

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            f"the d1 model refuses loglikelihood_rolling: {REFUSED_OUTPUT_TYPES['loglikelihood_rolling']}. "
            "Choose generate_until or multiple-choice (loglikelihood) tasks."
        )

    # ------------------------------------------------------------ the protocol card's view of the model

    def settings(self) -> dict[str, Any]:
        """The resolved model options (sampler, likelihood, weights) for the protocol card."""
        model = {key: self.options[key] for key in HARNESS_OPTIONS if key in self.options}
        for key in ("device", "max_batch_size"):
            model.pop(key, None)
        return {
            **model, "model_path": self.options["model_path"], **self.sampler.recorded(),
            "mask_token_id": self.mask_token_id, "weights_fingerprint": self.weights_fingerprint,
        }  # fmt: skip
