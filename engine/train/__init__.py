"""Training: the experiment runner, the loop, schedules, checkpoints, run logs, run declarations and the torchrun helpers."""
