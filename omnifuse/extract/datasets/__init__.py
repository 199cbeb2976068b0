"""Dataset adapters: raw datasets to rows of inputs (see docs/internals.md, section 2).

No adapter is imported here: ``registry.DECLARED`` names every dataset, its description and its module, and
``registry.DATASETS`` imports that module when the dataset is first opened, so importing the pipeline (or
``datasets.base``) does not import polars, which the eICU and MIMIC adapters need. Adding a dataset: one
module that declares it with ``@register_dataset`` (see ``registry``), one line in ``registry.DECLARED``, and
its test.
"""
