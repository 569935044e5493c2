"""The PAE MobiLLM side-tuning protocol: backbone, device and server roles, side
network, activation cache, messages, channels, transcript and baselines."""
