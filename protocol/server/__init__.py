"""The server's role: the recording endpoint, the side-tuning endpoint, its cache, limits, recovery and transcript (the view)."""
