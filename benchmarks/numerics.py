"""What changes the demo's digits: thread count vs the CPU kernels torch dispatches to.

    python benchmarks/numerics.py [--model runs/demo/models/sft]

Each setting runs in a fresh process (threads via OMP_NUM_THREADS, kernels via ATEN_CPU_CAPABILITY) and
computes the model's logits on fixed tokens and the gradient of a fixed loss; the table compares each with the
first setting: bitwise equal or not, and the largest absolute difference. Without --model, a small random
LLaDA (`d1 init-model --preset small`) is used.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SETTINGS = [("1", None), ("2", None), ("8", None), ("1", "avx2")]
"""(OMP_NUM_THREADS, ATEN_CPU_CAPABILITY): None keeps the kernels torch picks for this CPU."""


def child(model_path: str, output: str) -> None:
    from d1.models.loading import load_model

    model = load_model(model_path, dtype="float32").eval()
    ids = torch.randint(0, model.config.vocab_size - 10, (64, 104), generator=torch.Generator().manual_seed(0))
    logits = model(ids).logits
    logits.float().logsumexp(-1).mean().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.save(
        {"logits": logits.detach(), "grads": grads, "kernels": torch.backends.cpu.get_cpu_capability()}, output
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.model, args.child)
    with tempfile.TemporaryDirectory() as folder:
        model = args.model
        if model is None:
            from d1.models.presets import init_model

            model = str(init_model("small", Path(folder) / "model", 0, "llada"))
        results = []
        for threads, kernels in SETTINGS:
            env = {**os.environ, "OMP_NUM_THREADS": threads}
            env.pop("ATEN_CPU_CAPABILITY", None)
            if kernels:
                env["ATEN_CPU_CAPABILITY"] = kernels
            output = str(Path(folder) / f"{threads}-{kernels}.pt")
            subprocess.run(
                [sys.executable, __file__, "--model", model, "--child", output], env=env, check=True,
                capture_output=True,
            )  # fmt: skip
            results.append(torch.load(output))
    first = results[0]
    print(f"torch {torch.__version__}; compared with {SETTINGS[0][0]} thread(s), kernels {first['kernels']}\n")
    print("| threads | CPU kernels | logits equal | max abs diff | gradients equal | max abs diff |")
    print("|---|---|---|---|---|---|")
    for (threads, _), result in zip(SETTINGS, results, strict=True):
        cells = []
        for key in ("logits", "grads"):
            diff = (result[key] - first[key]).abs().max().item()
            cells += [str(torch.equal(result[key], first[key])), f"{diff:.1e}"]
        print(f"| {threads} | {result['kernels']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
