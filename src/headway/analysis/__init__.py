"""Analysis of patterns and runs: statistics (concentration, similarity, dynamics,
composition), head ablation, the findings of ``headway analyze``, and model comparison."""
