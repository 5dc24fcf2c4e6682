"""The optimizers: build.py (AdamW or Muon with AdamW for the rest, weight decay on matrices only)
and muon.py (Newton-Schulz orthogonalized momentum, per head)."""
