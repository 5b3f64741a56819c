"""Training: model loading, LoRA, SFT/DPO/GRPO, the step loop with checkpoints and
control. Needs the `train` extra."""
