"""Task data: classification task specs (SST-2 ships here) and instruction data for generation."""
