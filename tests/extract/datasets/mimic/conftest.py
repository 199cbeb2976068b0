"""The MIMIC adapter on the two real demos, each built once per session (reading the event tables takes a
while): ``(adapter, cohort, ehr arrays [N, 24, 76])``. ``m3`` and ``m4`` use the defaults (``ehr_mode="benchmark"``,
``phenotype_map="medfuse"``); ``m3_clean`` and ``m4_clean`` omnifuse's own cleaning (``ehr_mode="clean"``)."""

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


@pytest.fixture(scope="session")
def m3_clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[MimicAdapter, Cohort, np.ndarray]:
    a = MimicAdapter(MIMIC_III_DEMO, ehr_mode="clean", workdir=tmp_path_factory.mktemp("m3c"))
    return a, a.cohort(), a.ehr_arrays()


@pytest.fixture(scope="session")
def m4_clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[MimicAdapter, Cohort, np.ndarray]:
    a = build_adapter("mimic", root=MIMIC_IV_DEMO, ehr_mode="clean", workdir=tmp_path_factory.mktemp("m4c"))
    assert isinstance(a, MimicAdapter)
    return a, a.cohort(), a.ehr_arrays()
