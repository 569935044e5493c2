"""`secure-assist compare`: privacy-utility-cost sweeps over mechanisms, ε, layer subsets,
activation noise and sample counts, resumable per point (grid, sweep, table, plots, report)."""
