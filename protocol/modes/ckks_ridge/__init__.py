"""`ckks_ridge`: the HE head, a ridge fit on CKKS-encrypted Δ (messages, public context, packing, server endpoint)."""
