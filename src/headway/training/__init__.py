"""Runs: supervised fine-tuning with tracking, the callback that records patterns in any
Trainer, per-head weights and head-selective training, run folders, and trajectories over
saved checkpoints."""
