"""GRPO training of Qwen2-family models on GSM8K in JAX/Flax/Optax: the payload `tpuctl` launches."""
