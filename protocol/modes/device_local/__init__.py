"""`device_local`: the side network trained on the device; nothing leaves it."""
