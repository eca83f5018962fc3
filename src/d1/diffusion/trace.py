"""Generation traces: which positions each denoising step decided, the tokens and their confidence.

`generate(..., trace=Trace())` fills a `Trace` with one `RowTrace` per batch row. Positions count from the
first generated token; `steps[k]` is the k-th model forward pass of the call (a step may decide nothing, e.g.
a finished row waiting for the others). A confidence is the model's softmax probability of the decided token
(also under random remasking, whose ranking scores are random draws). Early stop fills the rest of a finished
row with EOS without a step: those positions are listed in `filled`. `to_dict`/`row_from_dict` give the JSON
form, stamped with `TRACE_FORMAT`/`TRACE_VERSION`; reading another version is an error that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

TRACE_FORMAT = "d1-trace"
TRACE_VERSION = 1


@dataclass
class TraceStep:
    """One forward pass: the block it decoded and what it decided there (parallel lists)."""

    block: int
    positions: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)


@dataclass
class RowTrace:
    """The trace of one generated row."""

    gen_length: int
    block_length: int
    steps: list[TraceStep] = field(default_factory=list)
    filled: list[int] = field(default_factory=list)
    fill_token: int | None = None

    def decided_at(self) -> list[int]:
        """The step that decided each position; `len(steps)` for early-stop fills, -1 if never decided."""
        when = [-1] * self.gen_length
        for index, step in enumerate(self.steps):
            for position in step.positions:
                when[position] = index
        for position in self.filled:
            when[position] = len(self.steps)
        return when

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def row_from_dict(data: dict[str, Any], where: str = "trace") -> RowTrace:
    """A `RowTrace` from its `to_dict` form; a clear error for a record missing fields."""
    try:
        steps = [TraceStep(**step) for step in data["steps"]]
        return RowTrace(
            gen_length=int(data["gen_length"]),
            block_length=int(data["block_length"]),
            steps=steps,
            filled=list(data.get("filled", [])),
            fill_token=data.get("fill_token"),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"{where} is not a d1 trace record (bad or missing field: {err}).") from err


def check_version(data: Any, where: str) -> None:
    """`data` must be a JSON object stamped with this module's format and version."""
    if not isinstance(data, dict) or data.get("format") != TRACE_FORMAT:
        raise ValueError(f'{where} is not a d1 trace file (no "format": "{TRACE_FORMAT}" field).')
    if data.get("version") != TRACE_VERSION:
        raise ValueError(
            f"{where} is a d1 trace of version {data.get('version')!r}; this d1 reads version "
            f"{TRACE_VERSION}. Regenerate it with this d1 (`d1 eval --save_traces N`)."
        )


class Trace:
    """What `generate` fills when given one: `rows[b]` for each batch row. `on_step(trace)`, if given, is
    called after every recorded step (e.g. to redraw a live display)."""

    def __init__(self, on_step: Callable[[Trace], None] | None = None) -> None:
        self.rows: list[RowTrace] = []
        self.on_step = on_step

    def start(self, batch: int, gen_length: int, block_length: int) -> None:
        self.rows = [RowTrace(gen_length, block_length) for _ in range(batch)]

    def record(
        self,
        block: int,
        offset: int,
        transfer: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
    ) -> None:
        """One step of `block`: `transfer` [B, W] marks the decided columns of a window starting `offset`
        columns after the first generated one, `x0` their tokens, `logits` [B, W, V] the step's logits.
        Without `transfer` the step decided nothing."""
        if transfer is None:
            for row in self.rows:
                row.steps.append(TraceStep(block))
            self._stepped()
            return
        chosen = x0[transfer]
        confidences = torch.zeros(transfer.shape, dtype=torch.float64, device=transfer.device)
        probs = F.softmax(logits[transfer].to(torch.float64), dim=-1)
        confidences[transfer] = probs.gather(-1, chosen[:, None])[:, 0]
        self.record_rows(block, torch.full((len(self.rows),), offset), transfer, x0, confidences)

    def record_rows(
        self,
        block: int,
        offsets: torch.Tensor,
        transfer: torch.Tensor,
        tokens: torch.Tensor,
        confidences: torch.Tensor,
    ) -> None:
        """One step of `block` whose window starts `offsets[b]` columns after row b's first generated one:
        `transfer` [B, W] marks the decided columns, `tokens` and `confidences` [B, W] what was decided."""
        rows, columns = transfer.nonzero(as_tuple=True)
        positions = offsets.to(columns.device)[rows] + columns
        per_row = [TraceStep(block) for _ in self.rows]
        decided = zip(
            rows.tolist(),
            positions.tolist(),
            tokens[transfer].tolist(),
            confidences[transfer].tolist(),
            strict=True,
        )
        for b, position, token, p in decided:
            per_row[b].positions.append(position)
            per_row[b].tokens.append(token)
            per_row[b].confidences.append(p)
        for row, step in zip(self.rows, per_row, strict=True):
            row.steps.append(step)
        self._stepped()

    def _stepped(self) -> None:
        if self.on_step is not None:
            self.on_step(self)

    def committed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step that committed each answer position and the token it committed, [B, gen_length] each (-1
        where no step did: early-stop fills): the decoding order that TraceRL's likelihood scores."""
        gen_length = self.rows[0].gen_length if self.rows else 0
        steps = torch.full((len(self.rows), gen_length), -1, dtype=torch.long)
        tokens = torch.full_like(steps, -1)
        for b, row in enumerate(self.rows):
            for index, step in enumerate(row.steps):
                steps[b, step.positions] = index
                tokens[b, step.positions] = torch.tensor(step.tokens, dtype=torch.long)
        return steps, tokens

    def fill(self, masked: torch.Tensor, offset: int, token: int) -> None:
        """Early stop wrote `token` over the masked columns `masked` [B, W] (window starts at `offset`)."""
        for b, c in masked.nonzero().tolist():
            self.rows[b].filled.append(offset + c)
            self.rows[b].fill_token = token
