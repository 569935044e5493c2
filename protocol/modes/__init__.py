"""Training modes, one folder each (its messages, device session, server endpoint); `registry.MODES` is the one list."""
