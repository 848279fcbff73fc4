"""headway: attention-head activation patterns of language models."""
