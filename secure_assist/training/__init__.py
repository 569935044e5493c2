"""The one run path of every training mode: hold-out, forwards, upload, training, safeguard, summary."""
