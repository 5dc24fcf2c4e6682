"""bdh-bench: measured speed and memory of training and generation (cli.py, one process per case in cases.py), the attention micro-bench (attention.py) and the data pipeline bench (data.py)."""
