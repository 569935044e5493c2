"""`pooled`: one side network trained on the union of a pool's caches (messages, pool, member endpoint)."""
