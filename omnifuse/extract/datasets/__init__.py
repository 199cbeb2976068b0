"""Dataset adapters: raw datasets to rows of inputs (see docs/internals.md, section 2).

Every adapter module is imported here by name, so the registry (``registry.DATASETS``) holds all of them
whichever module is imported first. Adding a dataset: one module that declares it with
``@register_dataset`` (see ``registry``), one line below, and its test.
"""

from omnifuse.extract.datasets import eicu, manifest, mimic

__all__ = ["eicu", "manifest", "mimic"]
