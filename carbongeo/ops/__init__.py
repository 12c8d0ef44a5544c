"""Numeric operations shared by the model, the stages and the evaluation, each written once."""
