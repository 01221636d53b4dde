"""The DeepSpeed training loop and its configuration."""
