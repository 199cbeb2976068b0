"""Experiments (compare, unimodal, ablation, sweep, imputation) run from one cache.

Each study trains one run per (method or variant, repeat, fold, missing rate) with the stage-two trainer,
stores the runs' test predictions under ``<out>/runs`` (resumable), and writes ``config.json``,
``results.csv``, ``folds.csv``, ``results.json``, ``results.md`` and PNG figures into ``<out>``.
"""

from omnifuse.experiments.ablation import ablation
from omnifuse.experiments.compare import CompareResult, compare
from omnifuse.experiments.imputation import imputation
from omnifuse.experiments.report import StudyResult
from omnifuse.experiments.sweep import sweep
from omnifuse.experiments.unimodal import unimodal

__all__ = ["CompareResult", "StudyResult", "ablation", "compare", "imputation", "sweep", "unimodal"]
