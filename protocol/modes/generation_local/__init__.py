"""`generation_local`: the generation side network trained on the device."""
