"""Experiments (compare, unimodal, ablation, sweep, imputation) run from one cache."""
