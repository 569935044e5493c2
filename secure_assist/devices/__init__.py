"""Many devices: how a training set is split over devices, and what each device holds."""
