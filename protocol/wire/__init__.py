"""The wire format: typed messages, their safetensors codec, and the channel a device talks through."""
