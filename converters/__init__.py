"""Checkpoint converters between Hugging Face Qwen2.5-VL and svlm-jax."""
