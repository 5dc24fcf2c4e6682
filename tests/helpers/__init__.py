"""Importable helpers of the test suite: reference models and tiny training runs."""
