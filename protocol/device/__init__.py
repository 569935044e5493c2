"""The device's role: inference-only forward passes, pivot features, and forwards shared between runs."""
