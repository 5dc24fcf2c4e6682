"""Small utilities shared by every layer: atomic file writes, host memory reuse, device peak probes, typed config sections."""
