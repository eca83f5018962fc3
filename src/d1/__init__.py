"""d1: masked SFT, diffu-GRPO and evaluation for masked diffusion language models."""
