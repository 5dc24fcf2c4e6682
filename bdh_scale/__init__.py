"""bdh-scale: a trainer for the BDH language model, from a laptop to a cluster."""

__version__ = "0.1.0"
