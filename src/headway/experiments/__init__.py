"""Fine-tuning experiments on top of patterns and runs: evaluation, the arm runner, and the
mixture, selection and training-mode experiments."""
