"""The lazy dataset registry: listing the datasets and importing the extraction pipeline import no adapter
(so no polars, which the GPU machines lack); opening a dataset imports its module and works as before; the
declarations (``registry.DECLARED``) and the modules' registrations agree."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from omnifuse.extract.datasets import registry
from omnifuse.extract.datasets.registry import (
    DATASETS,
    DECLARED,
    DatasetDeclaration,
    DatasetRegistry,
    describe_datasets,
    register_dataset,
)
from omnifuse.options import option

ROOT = Path(__file__).resolve().parents[3]
ADAPTERS = sorted({d.module for d in DECLARED.values()})

# Run first in each subprocess: polars (and its runtime) not found, as on the GPU machines.
BLOCK_POLARS = """
import importlib.abc, sys

class NoPolars(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("polars", "_polars_runtime"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoPolars())
"""


def _run(code: str, block_polars: bool) -> subprocess.CompletedProcess:
    src = (BLOCK_POLARS if block_polars else "") + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", src], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_pipeline_and_the_dataset_list_import_without_polars():
    r = _run(
        f"""
        import sys
        import omnifuse.extract.pipeline
        from omnifuse.extract.config import ExtractConfig, extract_config
        from omnifuse.extract.datasets.registry import get_dataset, list_datasets
        from omnifuse.options import declared

        assert list_datasets() == ["eicu", "eicu-demo", "manifest", "mimic"], list_datasets()
        help = next(d.info.help for d in declared(ExtractConfig) if d.name == "dataset")
        print("HELP", help)
        try:
            get_dataset("nope")
        except ValueError as e:
            print("UNKNOWN", e)
        loaded = [m for m in {ADAPTERS!r} if m in sys.modules]
        assert not loaded and "polars" not in sys.modules, (loaded, "polars" in sys.modules)
        # the manifest adapter imports polars only to read its file: its options resolve without it
        cfg = extract_config(dataset="manifest", manifest="m.csv", spec="s.toml")
        print("MANIFEST", cfg.dataset_options["manifest"], cfg.text_encoder)
        try:
            get_dataset("eicu-demo")
        except ModuleNotFoundError as e:
            print("EICU", e.name)
        """,
        block_polars=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    expected = ", ".join(f"{name} ({d.description})" for name, d in DECLARED.items())
    assert out["HELP"] == f"Dataset to extract: {expected}."
    assert out["UNKNOWN"] == "unknown dataset 'nope'; known: eicu, eicu-demo, manifest, mimic"
    assert out["MANIFEST"] == "m.csv bert-base-uncased"
    assert out["EICU"] == "polars"  # the block works: opening eICU needs polars, and only then


def _patient_stays() -> set[int]:
    """The ``patientunitstayid`` of every row of the bundled demo's patient table, read with csv."""
    from omnifuse.extract.datasets.eicu.readers import demo_root

    with gzip.open(demo_root() / "patient.csv.gz", "rt", newline="") as f:
        return {int(row["patientunitstayid"]) for row in csv.DictReader(f)}


def test_opening_a_dataset_imports_its_module_and_reads_it():
    r = _run(
        """
        import json, sys
        import omnifuse.extract.pipeline
        from omnifuse.extract.datasets.registry import build_adapter

        before = "omnifuse.extract.datasets.eicu.adapter" in sys.modules, "polars" in sys.modules
        adapter = build_adapter("eicu-demo")
        after = "omnifuse.extract.datasets.eicu.adapter" in sys.modules, "polars" in sys.modules
        cohort = adapter.cohort()
        print(json.dumps([before, after, type(adapter).__name__, sorted(int(s) for s in cohort.stay_id)]))
        """,
        block_polars=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    before, after, name, stays = json.loads(r.stdout.splitlines()[-1])
    assert before == [False, False]  # the pipeline alone imports neither the adapter nor polars
    assert after == [True, True] and name == "EicuDemoAdapter"
    assert stays == sorted(_patient_stays())  # one row per stay of the patient table (2,520)


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_each_declaration_is_what_its_module_registers(name):
    entry = DATASETS[name]
    decl = DECLARED[name]
    assert entry.name == name and entry.description == decl.description
    assert entry.build.__module__ == decl.module
    assert describe_datasets()[name] == decl.description


def test_membership_and_listing_import_nothing_and_a_missing_registration_is_named():
    reg = DatasetRegistry({"ghost": DatasetDeclaration("ghost", "a ghost", "omnifuse.no_such_module")})
    assert "ghost" in reg and "other" not in reg and list(reg) == ["ghost"] and len(reg) == 1
    assert reg.description("ghost") == "a ghost" and reg.registered("ghost") is None
    with pytest.raises(ModuleNotFoundError, match="omnifuse.no_such_module"):
        reg["ghost"]
    silent = DatasetRegistry({"ghost": DatasetDeclaration("ghost", "a ghost", "omnifuse.extract.datasets.base")})
    with pytest.raises(LookupError, match="dataset 'ghost': module omnifuse.extract.datasets.base does not register"):
        silent["ghost"]
    with pytest.raises(KeyError):
        silent["other"]


@dataclass
class _Opts:
    root: Path | None = option(None, help="A folder.")


def test_registered_datasets_join_the_declared_ones(monkeypatch):
    reg = DatasetRegistry(DECLARED)
    monkeypatch.setattr(registry, "DATASETS", reg)
    register_dataset("toy", description="a toy", options=_Opts)(lambda opts: opts)  # type: ignore[arg-type]
    assert list(reg) == [*DECLARED, "toy"] and len(reg) == len(DECLARED) + 1
    assert registry.list_datasets() == sorted([*DECLARED, "toy"])
    assert list(registry.describe_datasets().items())[-1] == ("toy", "a toy")
    assert reg.registered("eicu") is None  # listing imported no declared module into this registry
    with pytest.raises(TypeError, match="not in registry.DECLARED: register_dataset needs its description"):
        register_dataset("toy2", options=_Opts)
    with pytest.raises(ValueError, match="dataset 'mimic': description 'other' differs from DECLARED's"):
        register_dataset("mimic", description="other", options=_Opts)
