"""Baselines measured in the same harness as PAE (local LoRA, MobiLLM-style, split learning);
`secure_assist.references.registry.REFERENCES` is the one list of them."""
