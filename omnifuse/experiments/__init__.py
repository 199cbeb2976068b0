"""Experiments (compare, unimodal, ablation, sweep, imputation) run from one cache.

Each study trains one run per (method or variant, repeat, fold, missing rate) through the one fold runner
(:func:`omnifuse.fuse.fold.run_fold`), stores the runs' test predictions under ``<out>/runs`` (resumable), and
writes ``config.json``, ``results.csv``, ``folds.csv``, ``results.json``, ``results.md`` and PNG figures into
``<out>``. A study is a function of its own module (``omnifuse.experiments.compare.compare`` ...) taking the
cache, a configuration of :mod:`omnifuse.experiments.config` and keyword overrides. This package imports
nothing itself, so that the command line can read the configurations without loading torch.
"""
