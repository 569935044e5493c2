"""The one-command leakage audit: fine-tune each protection variant for real, run every
applicable registered attack on its server view, check DP claims, and write reports."""
