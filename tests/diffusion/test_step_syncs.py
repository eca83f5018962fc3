"""Host synchronisations of the cached step: what the samplers read back from the device (on a GPU each read
waits for every queued kernel). LLaDA's schedule on a block cache reads two values a block and none a step,
whatever the depth; parallel unmasking adds one a step (is the block done?). Model forwards take the cache
slots as a slice (no read) or a tensor (one read a forward, not one a layer), with the same logits."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

from d1.diffusion.dream_block_sampling import generate_dream_blocks
from d1.diffusion.sampling import generate, select_transfer
from d1.models.dream import DreamConfig, DreamModel
from d1.models.llada import LLaDAConfig, LLaDAModelLM
from tests.diffusion.test_sampling import EOS, MASK, VOCAB, random_prompt

READS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "argwhere"}
INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_", "masked_select"}


class Reads(TorchFunctionMode):
    """Counts the torch calls that read a device value on the host: conversions to Python values, `nonzero`,
    and indexing by a boolean mask (its result's shape depends on the data)."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        indices = args[1] if len(args) > 1 and name in INDEXING else ()
        indices = indices if isinstance(indices, tuple) else (indices,)
        if name in READS or any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
            self.kinds[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def count(self) -> int:
        return sum(self.kinds.values())


def llada(n_layers: int) -> LLaDAModelLM:
    torch.manual_seed(0)
    config = LLaDAConfig(
        d_model=32, n_heads=4, n_layers=n_layers, mlp_hidden_size=64, vocab_size=VOCAB, mask_token_id=MASK,
        eos_token_id=EOS, pad_token_id=EOS, init_std=0.3,
    )  # fmt: skip
    return LLaDAModelLM(config).eval()


def dream(n_layers: int) -> DreamModel:
    """A random Dream whose head never predicts the mask token (its logit is 0, below the scaled-up best)."""
    torch.manual_seed(0)
    config = DreamConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, mask_token_id=MASK, pad_token_id=EOS,
        bos_token_id=EOS, eos_token_id=EOS, initializer_range=0.3,
    )  # fmt: skip
    model = DreamModel(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4)
        model.lm_head.weight[MASK] = 0
    return model


SETTINGS = dict(gen_length=12, block_length=4, steps=12)


@pytest.mark.parametrize("n_layers", [1, 4])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("family", [llada, dream])
def test_schedule_on_a_cache_reads_two_values_a_block_at_any_depth(family, cache: str, n_layers: int) -> None:
    """Per block: its largest masked count and the first masked column of its refresh pass; no step reads."""
    with Reads() as reads:
        generate(family(n_layers), random_prompt(0, 2, 5), cache=cache, **SETTINGS)
    assert reads.count == 2 * 3, reads.kinds


@pytest.mark.parametrize("n_layers", [1, 4])
def test_threshold_reads_one_value_a_later_step(n_layers: int) -> None:
    """Parallel unmasking also asks, before each step after a block's first, whether the block is done: a
    block of p passes (limit 4) asks min(p, 3) times."""
    stats: dict = {}
    with Reads() as reads:
        generate(
            llada(n_layers), random_prompt(1, 2, 5), cache="dual", unmask="threshold", threshold=0.5,
            stats=stats, **SETTINGS,
        )  # fmt: skip
    assert reads.count == 2 * 3 + sum(min(p, 3) for p in stats["block_passes"]), reads.kinds


def test_exact_decoding_reads_the_window_start_once_a_step() -> None:
    stats: dict = {}
    with Reads() as reads:
        generate(llada(2), random_prompt(2, 2, 5), stats=stats, **SETTINGS)
    assert reads.count == 3 + stats["forward_passes"], reads.kinds


@pytest.mark.parametrize("n_layers", [1, 4])
def test_fastdllm_dream_sampler_reads_two_values_a_pass(n_layers: int) -> None:
    """Each pass asks whether a candidate predicted the mask token, and the block loop whether masks are
    left (once more at its end): greedy blocks are predicted whole, without boolean indexing."""
    stats: dict = {}
    with Reads() as reads:
        generate_dream_blocks(dream(n_layers), random_prompt(3, 2, 5), threshold=0.9, stats=stats, **SETTINGS)
    assert reads.count == 2 * stats["forward_passes"], reads.kinds


@pytest.mark.parametrize("family", [llada, dream])
def test_cache_slots_as_a_slice_or_a_tensor_give_the_same_logits(family) -> None:
    model = family(2)
    ids = random_prompt(4, 2, 10)
    whole = model(ids, use_cache=True).cache
    prefix = tuple((k[:, :, :6], v[:, :, :6]) for k, v in whole)
    with Reads() as sliced_reads:
        replaced = model(ids[:, 3:7], cache=whole, cache_position=slice(3, 7)).logits
        appended = model(ids[:, 6:], cache=prefix, cache_position=slice(6, 10)).logits
    assert sliced_reads.count == 0
    with Reads() as tensor_reads:
        assert torch.equal(
            replaced, model(ids[:, 3:7], cache=whole, cache_position=torch.arange(3, 7)).logits
        )
    assert tensor_reads.count == 1  # once a forward, not once a layer
    assert torch.equal(appended, model(ids[:, 6:], cache=prefix).logits)
    # scattered slots holding the tokens the cache was made from: the full forward's logits there
    scattered = model(ids[:, [1, 8]], cache=whole, cache_position=torch.tensor([1, 8])).logits
    torch.testing.assert_close(scattered, model(ids).logits[:, [1, 8]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "position, message",
    [
        (slice(8, 12), "lie inside the cache"),
        (slice(3, 6), "covers 3 slots"),
        (torch.arange(8, 12), "append"),
    ],
)
def test_bad_cache_slots_are_an_error(position, message: str) -> None:
    model = llada(1)
    ids = random_prompt(5, 1, 10)
    cache = model(ids, use_cache=True).cache
    with pytest.raises(ValueError, match=message):
        model(ids[:, 3:7], cache=cache, cache_position=position)


def test_select_transfer_breaks_ties_left_to_right() -> None:
    """The k most confident candidates; equal confidences go left to right, -inf candidates before
    non-candidates."""
    confidence = torch.tensor(
        [[0.5, 0.9, 0.5, 0.5, 0.95], [-torch.inf, 0.2, -torch.inf, 0.7, 0.1], [0.3, 0.3, 0.3, 0.3, 0.3]],
        dtype=torch.float64,
    )
    candidates = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    chosen = select_transfer(confidence, candidates, torch.tensor([3, 3, 0]))
    expected = [[1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [0, 0, 0, 0, 0]]
    assert chosen.int().tolist() == expected
