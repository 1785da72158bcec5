"""Seeded decoder checkpoints of every family edgec rebuilds, saved as the Hub ships them: instruments for
export, equivalence and speed tests, never for accuracy claims (their weights are random)."""

from __future__ import annotations

from pathlib import Path

import torch

# each family's own features switched on, small: 2 layers, hidden 64
FAMILY_CONFIGS = {
    "llama": {},
    "llama3": {"model_type": "llama", "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "mistral": {"sliding_window": 4096},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0},
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 16,
                    "layer_types": ["sliding_attention", "full_attention"]},
    "phi3": {"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.1] * 4,
                                 "long_factor": [2.0] * 8, "original_max_position_embeddings": 48},
             "original_max_position_embeddings": 48},
    "smollm3": {"no_rope_layers": [1, 0]},
    "granite": {"embedding_multiplier": 6.0, "attention_multiplier": 0.2, "residual_multiplier": 0.5,
                "logits_scaling": 4.0},
    "olmo2": {},
}


def seeded_decoder_dir(out: Path, model_type: str = "llama", dtype=None, **overrides) -> Path:
    """A tiny seeded causal LM of any family in FAMILY_CONFIGS, saved as a complete HF directory (in
    `dtype`, e.g. torch.bfloat16 as the Hub ships them) with a real BPE tokenizer trained on the built-in
    prose (vocab 512): for export and equivalence tests, never for accuracy."""
    import transformers

    from edgec.calibration import prose
    from edgec.zoo.train_tinylm import save_hf_dir, train_tokenizer

    tok = train_tokenizer(prose.split("calib")[:8], vocab=512)
    family = dict(FAMILY_CONFIGS[model_type])
    kind = family.pop("model_type", model_type)
    config = transformers.AutoConfig.for_model(kind, **{**dict(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0,
        eos_token_id=1, pad_token_id=2, tie_word_embeddings=False), **family, **overrides})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # HF initialises norms to one (Gemma: zero) and biases to zero: make them matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif p.dim() == 2:  # larger weights: sharper logits, so greedy ties are unlikely
                p.mul_(4.0)
    if dtype is not None:
        model = model.to(dtype)
    save_hf_dir(model, tok, out)
    return out
