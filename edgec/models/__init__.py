"""Canonical models and their Hugging Face rebuilds."""

# HF model types rebuilt as models.decoder.Decoder (their options: models.hf_decoder.FAMILIES)
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "smollm3", "granite",
                 "olmo2")
