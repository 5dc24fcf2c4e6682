"""What goes wrong in a long run and what the loop does about it: guard.py (non-finite steps),
signals.py (preemption, Ctrl-C, a dead launcher) and inject.py (the faults tests inject, through
one hook that costs nothing unless a test arms it)."""
