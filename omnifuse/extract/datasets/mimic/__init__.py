"""MIMIC-III / MIMIC-IV ICU stays with MIMIC-CXR: the ``mimic`` adapter (docs/mimic.md)."""

from omnifuse.extract.datasets.mimic.adapter import DATA_USE, MimicAdapter, MimicOptions, build_mimic

__all__ = ["DATA_USE", "MimicAdapter", "MimicOptions", "build_mimic"]
