"""Baselines that run in the same harness as PAE: MobiLLM-style and local LoRA."""
