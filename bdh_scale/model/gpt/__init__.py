"""The GPT-2-style baseline (gpt.py) and its field of the recipe's model section (gpt_config.py)."""
