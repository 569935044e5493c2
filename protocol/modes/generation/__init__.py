"""`generation`: PAE for free-text answers (messages, device passes, server endpoint)."""
