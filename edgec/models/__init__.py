"""Canonical models and their Hugging Face rebuilds."""

DECODER_TYPES = ("llama", "qwen2")  # HF model types rebuilt as models.decoder.Decoder
