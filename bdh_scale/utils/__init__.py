"""Small utilities shared by every layer: atomic file writes, directory locks, host memory reuse, device peak
probes, typed config sections, tensor trees."""
