"""What is checked before step 1, so that a run that cannot finish fails in seconds and writes
nothing: memory.py (will one step fit in memory?) and preflight.py (validation windows, the
output directory, free disk, a corpus that is not text)."""
