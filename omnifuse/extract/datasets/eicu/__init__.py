"""eICU Collaborative Research Database: the ``eicu`` (any eICU-CRD root) and ``eicu-demo`` (bundled) datasets.

One row per ICU stay (``patientunitstayid``, every row of ``patient``), grouped by ``uniquepid``. Every
input comes from the first 24 hours of the stay (offsets 0 to 1,440 minutes, both inclusive) and every
column is chosen by an allow-list (``variables``); ``docs/eicu.md`` describes the modalities, the
allow-lists and the leakage rules. The package is split by concern:

- ``variables``: the allow-lists (columns, units, plausibility ranges, bin aggregation);
- ``readers``: finding the tables, scanning them as strings, the shared column expressions;
- ``cohort``: stays, patients, the ``mortality`` label and the ``apache_iva`` reference;
- ``vitals``, ``apache``, ``text``, ``admission``, ``exam_values``, ``treatments``, ``care_limitation``: one
  module per modality's features; ``tabular``: what the tabular modalities share (column kinds, codes);
- ``adapter``: the ``Adapter`` classes, their options and their registration.

Modalities (``inputs`` returns ``None`` where the source has nothing for the stay in the window):
``vitals`` (time series ``[24, F]`` float32, hourly bins, NaN = not observed), ``apache`` (tabular ``[F]``
float32, NaN = not recorded), ``history``, ``diagnosis`` and ``exam`` (text), then the tabular ``admission``
(every stay), ``exam_values``, ``treatments`` and, only with ``care_limitation=True``, ``care_limitation``.
Tabular columns declare their kinds (numeric, binary, categorical codes) in ``preprocessing``.
"""

from omnifuse.extract.datasets.eicu.adapter import (
    EicuAdapter,
    EicuDemoAdapter,
    EicuDemoOptions,
    EicuOptions,
    build_eicu,
    build_eicu_demo,
)
from omnifuse.extract.datasets.eicu.readers import DEMO_DIRNAME, EicuDataError, demo_root, find_tables

__all__ = [
    "DEMO_DIRNAME",
    "EicuAdapter",
    "EicuDataError",
    "EicuDemoAdapter",
    "EicuDemoOptions",
    "EicuOptions",
    "build_eicu",
    "build_eicu_demo",
    "demo_root",
    "find_tables",
]
