"""ExtractConfig: one declaration for flags, file keys and keyword overrides; the dataset's options and default
encoders come from its declaration; the command's flags and help list every dataset and refuse conflicting
declarations; the CLI reads a file and flags override it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from omnifuse.cache import open_cache
from omnifuse.cli import app
from omnifuse.extract.config import (
    ExtractConfig,
    dataset_cli_parameters,
    default_cache_path,
    extract_cli_parameters,
    extract_config,
)
from omnifuse.extract.datasets import registry
from omnifuse.extract.datasets.registry import DATASETS, register_dataset
from omnifuse.options import option
from tests.helpers import write_tabular_manifest

runner = CliRunner()


def test_dataset_defaults_fill_unset_encoders():
    cfg = extract_config()
    assert (cfg.dataset, cfg.text_encoder, cfg.text_pooling) == ("eicu-demo", "minilm", "mean")
    assert cfg.image_encoder == "microsoft/resnet-34" and cfg.dataset_options == {
        "pre_admission_text": False,
        "care_limitation": False,
    }
    cfg = extract_config(dataset="mimic", root="/data/mimic", text_pooling="cls")
    assert (cfg.text_encoder, cfg.text_pooling) == ("bert-base-uncased", "cls")  # given values are kept
    assert cfg.dataset_options["root"] == Path("/data/mimic") and cfg.dataset_options["timestep"] == 2.0
    assert default_cache_path("mimic") == Path("cache/mimic.zarr")


def test_file_then_overrides_and_flat_or_nested_dataset_options(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('dataset = "mimic"\nroot = "/a"\nbatch_size = 8\n[dataset_options]\ntimestep = 1.0\n')
    cfg = extract_config(path, batch_size=None, limit=5, hours=24)
    assert cfg.batch_size == 8 and cfg.limit == 5  # None override ignored; a flag over the default
    assert cfg.dataset_options["root"] == Path("/a") and cfg.dataset_options["timestep"] == 1.0
    assert cfg.dataset_options["hours"] == 24.0
    assert extract_config(cfg) == cfg  # resolving again changes nothing
    again = extract_config(json.loads(json.dumps(cfg.to_json())))  # from the JSON saved in a cache
    assert again == cfg


def test_options_the_dataset_does_not_use_are_named(tmp_path):
    with pytest.raises(ValueError, match="--dataset eicu does not use --timestep"):
        extract_config(dataset="eicu", root=tmp_path, timestep=1.0)
    with pytest.raises(ValueError, match="--dataset eicu-demo does not use --colour"):
        extract_config({"colour": "red"})
    with pytest.raises(ValueError, match="--dataset manifest needs --manifest .* and --spec"):
        extract_config(dataset="manifest")
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        extract_config(dataset="nope")
    with pytest.raises(ValueError, match="limit must be at least 1, got 0"):
        extract_config(limit=0)
    with pytest.raises(ValueError, match="'precision' must be one of auto, bf16, fp32"):
        extract_config(precision="fp8")


def test_cli_reads_the_file_and_flags_override_it(tmp_path):
    manifest, spec = write_tabular_manifest(tmp_path / "data")
    cfg = tmp_path / "extract.toml"
    cfg.write_text(f'dataset = "manifest"\nmanifest = "{manifest}"\nspec = "{spec}"\nlimit = 2\nbatch_size = 5\n')
    out = tmp_path / "c.zarr"
    r = runner.invoke(app, ["extract", "--config", str(cfg), "--limit", "4", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    saved = open_cache(out).attrs["summary"]["extract_config"]
    assert saved["limit"] == 4 and saved["batch_size"] == 5 and saved["progress"] is False
    assert open_cache(out).n == 4
    r = runner.invoke(app, ["extract", "--config", str(cfg), "--dataset", "eicu-demo", "--out", str(out)])
    assert r.exit_code == 2 and "--dataset eicu-demo does not use --manifest, --spec" in r.output
    r = runner.invoke(app, ["extract", "--config", str(tmp_path / "absent.toml")])
    assert r.exit_code == 2 and "absent.toml does not exist" in r.output


def test_the_extract_command_lists_every_dataset_and_flag():
    help_text = ExtractConfig.__dataclass_fields__["dataset"].metadata["omnifuse.option"].help
    for name, entry in DATASETS.items():
        assert f"{name} ({entry.description})" in help_text
    flags = {p.name for p in extract_cli_parameters()}
    for entry in DATASETS.values():
        assert {d.name for d in entry.declared_options()} <= flags


def test_conflicting_dataset_options_are_refused(monkeypatch):
    @dataclass
    class HoursAsNumber:
        hours: float = option(24.0, help="Window from admission, in hours.")

    @dataclass
    class HoursAsText:
        hours: str = option("24", help="Hours as text.")

    @dataclass
    class Shadows:
        batch_size: int = option(1, help="Shadows an ExtractConfig field.")

    monkeypatch.setattr(registry, "DATASETS", dict(DATASETS))
    for n, cls in (("a", HoursAsNumber), ("b", HoursAsText)):
        register_dataset(n, description=n, options=cls, image_encoder="i", text_encoder="t", text_pooling="tokens")(
            lambda opts: opts
        )
    with pytest.raises(TypeError, match="option 'hours' with different types"):
        dataset_cli_parameters(registry.DATASETS)
    register_dataset("c", description="c", options=Shadows, image_encoder="i", text_encoder="t", text_pooling="tokens")(
        lambda opts: opts
    )
    with pytest.raises(TypeError, match="option 'batch_size' is also an ExtractConfig field"):
        dataset_cli_parameters({"c": registry.DATASETS["c"]})


def test_add_modality_options_are_checked_together():
    cfg = extract_config(
        dataset="manifest",
        manifest="m.csv",
        spec="s.toml",
        add_modalities=["report"],
        modality_name="report_bert",
        text_encoder="bert-base-uncased",
    )
    assert cfg.add_modalities == ["report"] and cfg.modality_name == "report_bert"
    for bad, message in (
        (dict(modality_name="x"), "--modality-name names the one modality added; give exactly one --add-modality"),
        (dict(add_modalities=["a", "b"], modality_name="x"), "give exactly one --add-modality"),
        (dict(add_modalities=["a"], modalities=["b"]), "--modality and --add-modality cannot be combined"),
        (dict(add_modalities=[]), "--add-modality needs the name of a modality"),
    ):
        with pytest.raises(ValueError, match=message):
            ExtractConfig(**bad)
    r = runner.invoke(app, ["extract", "--help"], env={"COLUMNS": "200"})
    assert "--add-modality" in r.output and "--modality-name" in r.output


def test_image_pooling_is_checked_against_the_entry(tmp_path):
    """--image-pooling takes one of the chosen registered entry's poolings (aliases too); anything else is refused
    in one line that lists the valid ones, before any input is read."""
    assert extract_config(image_encoder="microsoft/rad-dino", image_pooling="patch_mean").image_pooling == "patch_mean"
    assert extract_config().image_pooling is None  # the entry's default pooling
    with pytest.raises(
        ValueError,
        match=r"^--image-pooling 'avg' is not a pooling of image encoder 'rad-dino'; "
        r"valid: cls, patch_mean$",
    ):
        extract_config(image_encoder="rad-dino", image_pooling="avg")
    with pytest.raises(ValueError, match="valid: pooled$"):  # the dataset's default encoder, ResNet34
        extract_config(image_pooling="cls")
    with pytest.raises(ValueError, match="'someone/vit' is not a registered one"):
        extract_config(image_encoder="someone/vit", image_pooling="cls")
    with pytest.raises(ValueError, match="is not a registered one"):  # a text entry is no image encoder
        extract_config(image_encoder="minilm", image_pooling="mean")
    r = runner.invoke(
        app, ["extract", "--image-encoder", "biomedclip", "--image-pooling", "mean", "--out", str(tmp_path / "x.zarr")]
    )
    assert r.exit_code == 2 and "valid: proj, cls" in r.output and not (tmp_path / "x.zarr").exists()


def test_image_pooling_flag_reaches_the_encoder_and_the_cache(tmp_path, monkeypatch):
    """``omnifuse extract --image-pooling cls`` builds BiomedCLIP's image tower with its trunk's CLS token
    (768-d instead of the 512-d projection) and records the pooling in the modality's preprocessing and the
    saved configuration, as ``build_image_encoder(..., pooling="cls")`` does from Python
    (tests/extract/encoders/test_biomedclip.py). Random weights at
    32 px stand in for the hub's (the same architecture and pooling code)."""
    import numpy as np
    from PIL import Image

    from omnifuse.extract import pipeline
    from omnifuse.extract.encoders import build_image_encoder

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = ["stay_id,subject_id,img"]
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8), mode="L").save(data / f"{i}.png")
        rows.append(f"{i},p{i},{data / f'{i}.png'}")
    (data / "m.csv").write_text("\n".join(rows) + "\n")
    (data / "spec.toml").write_text('[modalities.cxr]\ninput = "image"\ncolumn = "img"\n')
    calls = []

    def random_weights(name, **kw):
        calls.append((name, kw.get("pooling")))
        return build_image_encoder(name, size=32, pretrained=False, **kw)

    monkeypatch.setattr(pipeline, "build_image_encoder", random_weights)
    base = [
        "extract",
        "--dataset",
        "manifest",
        "--manifest",
        str(data / "m.csv"),
        "--spec",
        str(data / "spec.toml"),
        "--image-encoder",
        "biomedclip",
        "--no-progress",
        "--workers",
        "0",
        "--precision",
        "fp32",
    ]
    shapes = {}
    for pooling in ("cls", None):
        out = tmp_path / f"{pooling}.zarr"
        r = runner.invoke(app, [*base, "--out", str(out), *(["--image-pooling", pooling] if pooling else [])])
        assert r.exit_code == 0, r.output
        cache = open_cache(out)
        prep = cache.spec.modality("cxr").preprocessing
        assert prep["pooling"] == (pooling or "proj")
        assert cache.attrs["summary"]["extract_config"]["image_pooling"] == pooling
        shapes[pooling] = tuple(cache.spec.modality("cxr").shape)
    assert calls == [("biomedclip", "cls"), ("biomedclip", None)]
    assert shapes == {"cls": (768,), None: (512,)}
