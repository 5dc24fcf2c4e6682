"""What a run reports: rows.py (metrics rows, validation lines, samples), progress.py (a bar on a
terminal, plain lines in a log), tracking.py (metrics.jsonl and Accelerate's trackers),
diagnostics.py (sparsity, rho norms, MFU) and profiling.py (a torch profiler trace)."""
