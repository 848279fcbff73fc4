"""Tiny randomly initialised causal LMs of every supported architecture (built from configs,
no download). 2 layers, 4 query heads; grouped-query attention where the family has it."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 300  # >= the byte tokenizer's 259 ids

IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
COMMON = dict(**IDS, vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=256)

TINY_CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**COMMON, num_key_value_heads=2),
    "mistral": lambda: tf.MistralConfig(**COMMON, num_key_value_heads=2),
    "qwen2": lambda: tf.Qwen2Config(**COMMON, num_key_value_heads=2),
    "qwen3": lambda: tf.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=8),
    "gemma": lambda: tf.GemmaConfig(**COMMON, num_key_value_heads=1, head_dim=8),
    "gemma2": lambda: tf.Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=8,
                                      sliding_window=16),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**COMMON, num_key_value_heads=2, head_dim=8,
                                               sliding_window=16),
    "phi3": lambda: tf.Phi3Config(**COMMON, num_key_value_heads=2),
    "gpt2": lambda: tf.GPT2Config(**IDS, vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                  n_positions=256),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**COMMON),
    "opt": lambda: tf.OPTConfig(**IDS, vocab_size=VOCAB, hidden_size=32, ffn_dim=64,
                                num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=256, word_embed_proj_dim=32),
    "phi": lambda: tf.PhiConfig(**COMMON),
}


def tiny_model(model_type: str, seed: int = 0, attn: str | None = None):
    """A tiny ``model_type`` CausalLM in eval mode, float32, fixed seed."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[model_type]()
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    return model.float().eval()
