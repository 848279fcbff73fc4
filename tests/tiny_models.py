"""Tiny randomly initialised causal LMs of every supported family (built from configs, no
download). 2 layers, 4 query heads; grouped-query attention where the family has it; mixtures
of 4 experts; MLA with its own head sizes."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 300  # >= the byte tokenizer's 259 ids

IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
COMMON = dict(**IDS, vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=256)
GQA = dict(**COMMON, num_key_value_heads=2)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=16)
MLA = dict(**COMMON, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
           qk_rope_head_dim=4, v_head_dim=6, n_routed_experts=4, n_shared_experts=1,
           first_k_dense_replace=1, **MOE)


def _gemma3():
    text = dict(GQA, head_dim=8, sliding_window=16)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    return tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                           **IDS, image_token_index=VOCAB - 1, boi_token_index=VOCAB - 2,
                           eoi_token_index=VOCAB - 3)


TINY_CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**GQA),
    "mistral": lambda: tf.MistralConfig(**GQA),
    "qwen2": lambda: tf.Qwen2Config(**GQA),
    "qwen3": lambda: tf.Qwen3Config(**GQA, head_dim=8),
    "gemma": lambda: tf.GemmaConfig(**COMMON, num_key_value_heads=1, head_dim=8),
    "gemma2": lambda: tf.Gemma2Config(**GQA, head_dim=8, sliding_window=16),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**GQA, head_dim=8, sliding_window=16),
    "gemma3": _gemma3,  # multimodal: Gemma3ForConditionalGeneration, its text tower scored
    "smollm3": lambda: tf.SmolLM3Config(**GQA),
    "phi3": lambda: tf.Phi3Config(**GQA),
    "gpt2": lambda: tf.GPT2Config(**IDS, vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                  n_positions=256),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**COMMON),
    "opt": lambda: tf.OPTConfig(**IDS, vocab_size=VOCAB, hidden_size=32, ffn_dim=64,
                                num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=256, word_embed_proj_dim=32),
    "phi": lambda: tf.PhiConfig(**COMMON),
    "mixtral": lambda: tf.MixtralConfig(**GQA, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(**GQA, num_experts=4, **MOE,
                                           shared_expert_intermediate_size=32),
    "qwen3_moe": lambda: tf.Qwen3MoeConfig(**GQA, head_dim=8, num_experts=4, **MOE),
    "olmo": lambda: tf.OlmoConfig(**GQA),
    "olmo2": lambda: tf.Olmo2Config(**GQA),
    "olmo3": lambda: tf.Olmo3Config(**GQA, sliding_window=16),
    # non-trivial output and residual scaling: lost if the loss bypassed the model's forward
    "granite": lambda: tf.GraniteConfig(**GQA, logits_scaling=4.0, embedding_multiplier=2.0,
                                        residual_multiplier=0.5, attention_multiplier=0.3),
    "cohere": lambda: tf.CohereConfig(**GQA, logit_scale=0.25),
    "stablelm": lambda: tf.StableLmConfig(**GQA),
    "starcoder2": lambda: tf.Starcoder2Config(**GQA),
    "falcon": lambda: tf.FalconConfig(**IDS, vocab_size=VOCAB, hidden_size=32,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      new_decoder_architecture=True, num_kv_heads=2),
    "falcon_multi_query": lambda: tf.FalconConfig(**IDS, vocab_size=VOCAB, hidden_size=32,
                                                  num_hidden_layers=2, num_attention_heads=4,
                                                  multi_query=True),
    "gptj": lambda: tf.GPTJConfig(**IDS, vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                  n_positions=256, rotary_dim=4),
    "bloom": lambda: tf.BloomConfig(**IDS, vocab_size=VOCAB, hidden_size=32, n_layer=2,
                                    n_head=4),
    "gpt_oss": lambda: tf.GptOssConfig(**GQA, head_dim=8, num_local_experts=4,
                                       num_experts_per_tok=2, sliding_window=16),
    "deepseek_v2": lambda: tf.DeepseekV2Config(**MLA),
    "deepseek_v3": lambda: tf.DeepseekV3Config(**MLA, n_group=1, topk_group=1),
    "glm": lambda: tf.GlmConfig(**GQA, head_dim=8),
    "glm4": lambda: tf.Glm4Config(**GQA, head_dim=8),
}


def tiny_model(model_type: str, seed: int = 0, attn: str | None = None):
    """A tiny ``model_type`` CausalLM in eval mode, float32, fixed seed."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[model_type]()
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    return model.float().eval()
