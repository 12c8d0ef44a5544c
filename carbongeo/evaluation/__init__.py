"""Scoring: metrics, baselines and the evaluation report."""
