"""The BDH-HRM hybrid (hrm.py) and its fields of the recipe's model section (hrm_config.py)."""
