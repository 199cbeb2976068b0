"""``extract_dataset``: a registered dataset by name, its options and the run's options resolved into one
configuration, which is saved with the cache."""

from __future__ import annotations

from omnifuse.cache import open_cache
from omnifuse.extract.config import ExtractConfig
from omnifuse.extract.run import extract_dataset
from tests.helpers import write_tabular_manifest


def test_extract_dataset_saves_its_configuration(tmp_path):
    manifest, spec = write_tabular_manifest(tmp_path / "data")
    out = tmp_path / "tab.zarr"
    summary = extract_dataset("manifest", out, manifest=manifest, spec=spec, batch_size=3, progress=False)
    assert summary.finalized and summary.rows == 6
    saved = open_cache(out).attrs["summary"]["extract_config"]
    assert saved["dataset"] == "manifest" and saved["out"] == str(out) and saved["batch_size"] == 3
    assert saved["dataset_options"] == {"manifest": str(manifest), "spec": str(spec), "root": None}
    assert saved["text_encoder"] == "bert-base-uncased" and saved["text_pooling"] == "tokens"
    assert ExtractConfig(**{**saved, "out": None, "dataset_options": {}}).batch_size == 3  # plain JSON values
