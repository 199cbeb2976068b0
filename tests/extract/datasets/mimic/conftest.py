"""The MIMIC adapter on the two real demos, each built once per session (reading the event tables takes a
while): ``(adapter, cohort, ehr arrays [N, 24, 76])``."""

from __future__ import annotations

import numpy as np
import pytest

from omnifuse.extract.datasets.base import Cohort
from omnifuse.extract.datasets.mimic import MimicAdapter
from omnifuse.extract.datasets.registry import build_adapter
from tests.helpers import MIMIC_III_DEMO, MIMIC_IV_DEMO


@pytest.fixture(scope="session")
def m3(tmp_path_factory: pytest.TempPathFactory) -> tuple[MimicAdapter, Cohort, np.ndarray]:
    a = MimicAdapter(MIMIC_III_DEMO, workdir=tmp_path_factory.mktemp("m3"))
    return a, a.cohort(), a.ehr_arrays()


@pytest.fixture(scope="session")
def m4(tmp_path_factory: pytest.TempPathFactory) -> tuple[MimicAdapter, Cohort, np.ndarray]:
    a = build_adapter("mimic", root=MIMIC_IV_DEMO, workdir=tmp_path_factory.mktemp("m4"))
    assert isinstance(a, MimicAdapter)
    return a, a.cohort(), a.ehr_arrays()
