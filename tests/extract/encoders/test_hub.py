"""Loading from the hub offline: one line naming the offline choices after one quick check (no retry loop),
offline mode honoured without any network check, local folders and models in the local cache loaded without
the network. The network check itself is replaced by the tests: nothing here needs or uses a network."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

from omnifuse.cli import app
from omnifuse.extract.encoders import HubUnreachableError, build_image_encoder, build_text_encoder, hub
from tests.helpers import minilm_dir, write_tabular_manifest

runner = CliRunner()


@pytest.fixture()
def no_download(monkeypatch):
    """transformers' loaders fail the test when asked for a hub id: the refusal must come before them."""
    calls: list[str] = []

    def refuse(real):
        def load(source, *a, **k):
            if not Path(str(source)).exists():
                calls.append(str(source))
                raise AssertionError(f"download attempted for {source}")
            return real(source, *a, **k)

        return load

    for cls in (transformers.AutoModel, transformers.AutoTokenizer, transformers.AutoImageProcessor):
        monkeypatch.setattr(cls, "from_pretrained", refuse(cls.from_pretrained))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "cache_state", lambda repo, filename="config.json": "unknown")  # nothing cached
    return calls


def _unreachable(monkeypatch) -> list[str]:
    checked: list[str] = []

    def reachable(endpoint, timeout=hub.HUB_TIMEOUT_S):
        checked.append(endpoint)
        return False

    monkeypatch.setattr(hub, "hub_reachable", reachable)
    return checked


def _assert_offline_line(message: str, name: str, family: str) -> None:
    assert "\n" not in message
    assert message.startswith(f"{family} encoder {name!r} is not in the local Hugging Face cache")
    for choice in (
        "--text-encoder minilm (the bundled offline MiniLM)",
        "--image-encoder random:resnet34",
        "a local model folder",
    ):
        assert choice in message, message


@pytest.mark.parametrize(
    "build, name, family",
    [(build_text_encoder, "bert-base-uncased", "text"), (build_image_encoder, "microsoft/resnet-34", "image")],
)
def test_an_unreachable_hub_is_one_line_naming_the_offline_choices_without_retrying(
    monkeypatch, no_download, build, name, family
):
    checked = _unreachable(monkeypatch)
    t0 = time.perf_counter()
    with pytest.raises(HubUnreachableError) as e:
        build(name, device="cpu")
    assert time.perf_counter() - t0 < 2.0  # no retry loop (offline, transformers took 29 s)
    _assert_offline_line(str(e.value), name, family)
    assert "https://huggingface.co" in str(e.value) and "did not answer within 3 s" in str(e.value)
    assert checked == ["https://huggingface.co"] and no_download == []  # one check, no download attempted


def test_offline_mode_refuses_without_any_network_check(monkeypatch, no_download):
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("network checked in offline mode"))
    with pytest.raises(HubUnreachableError, match=r"offline mode is set \(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE\)"):
        build_text_encoder("bert-base-uncased", device="cpu")
    assert no_download == []


def test_hf_endpoint_is_the_address_checked(monkeypatch, no_download):
    checked = _unreachable(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org/")
    with pytest.raises(HubUnreachableError, match=r"the hub \(https://hub.example.org\) did not answer"):
        build_image_encoder("acme/xray-backbone", device="cpu")
    assert checked == ["https://hub.example.org"]


def test_the_command_line_prints_the_refusal_as_one_error_line(monkeypatch, no_download, tmp_path):
    _unreachable(monkeypatch)
    data = tmp_path / "data"
    data.mkdir()
    (data / "m.csv").write_text("stay_id,subject_id,report\n1,p1,No acute process.\n2,p2,Clear lungs.\n")
    (data / "spec.toml").write_text('[modalities.report]\ninput = "text"\ncolumn = "report"\n')
    r = runner.invoke(
        app,
        [
            "extract",
            "--dataset",
            "manifest",
            "--manifest",
            str(data / "m.csv"),
            "--spec",
            str(data / "spec.toml"),
            "--out",
            str(tmp_path / "c.zarr"),
            "--no-progress",
        ],
    )
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: text encoder 'bert-base-uncased'"), r.output
    assert not (tmp_path / "c.zarr").exists()


def test_a_local_folder_and_the_bundled_minilm_load_with_the_hub_unreachable(monkeypatch, no_download):
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("a local folder needs no network"))
    folder = build_text_encoder(minilm_dir(), pooling="mean", max_tokens=16, device="cpu", precision="fp32")
    bundled = build_text_encoder("minilm", pooling="mean", max_tokens=16, device="cpu", precision="fp32")
    assert folder.weights_hash == bundled.weights_hash and folder.shape == (384,)
    x, _ = folder.encode([folder.prepare("Small left pleural effusion.")])
    assert x.shape == (1, 384) and torch.isfinite(x).all()
    random = build_image_encoder("random:resnet34", device="cpu", precision="fp32", size=32)
    assert random.shape == (512,) and no_download == []


def test_a_path_that_does_not_exist_is_refused_by_transformers_without_the_network(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("a path is not a hub id"))
    assert not hub.is_repo_id(str(tmp_path / "absent")) and hub.is_repo_id("acme/model")
    with pytest.raises(ValueError, match="cannot be loaded by transformers"):
        build_text_encoder(str(tmp_path / "absent"), device="cpu")


def test_a_model_in_the_local_hugging_face_cache_loads_without_the_network(monkeypatch, tmp_path):
    """A hub id found in the local cache (the layout huggingface_hub writes) loads with local_files_only."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--minilm" / "snapshots" / ("a" * 40)
    shutil.copytree(minilm_dir(), snapshot)
    (cache / "models--acme--minilm" / "refs").mkdir()
    (cache / "models--acme--minilm" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("a cached model needs no network"))
    assert hub.cache_state("acme/minilm") == "cached" and hub.cache_state("acme/other") == "unknown"
    enc = build_text_encoder("acme/minilm", pooling="mean", max_tokens=16, device="cpu", precision="fp32")
    ref = build_text_encoder(minilm_dir(), pooling="mean", max_tokens=16, device="cpu", precision="fp32")
    assert enc.name == "acme/minilm" and enc.weights_hash == ref.weights_hash
    text = [enc.prepare("Stable cardiomegaly without edema.")]
    np.testing.assert_allclose(enc.encode(text)[0].numpy(), ref.encode(text)[0].numpy(), rtol=1e-5, atol=1e-6)


def test_reachability_is_one_head_request_with_the_timeout(monkeypatch):
    hub.hub_reachable.cache_clear()
    seen: list[tuple[str, str, float]] = []

    class Answer:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def urlopen(request, timeout):
        seen.append((request.full_url, request.get_method(), timeout))
        if "down" in request.full_url:
            raise urllib.error.URLError("Name or service not known")
        if "forbidden" in request.full_url:
            raise urllib.error.HTTPError(request.full_url, 403, "Forbidden", {}, None)
        return Answer()

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    try:
        assert hub.hub_reachable("https://up.example") is True
        assert hub.hub_reachable("https://forbidden.example") is True  # an answer, whatever its status
        assert hub.hub_reachable("https://down.example") is False
        assert hub.hub_reachable("https://down.example") is False  # asked once per process
        assert seen == [(f"https://{h}.example", "HEAD", 3.0) for h in ("up", "forbidden", "down")]
    finally:
        hub.hub_reachable.cache_clear()


def test_offline_flags_are_read_when_loading(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    assert not hub.offline_requested()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.offline_requested()
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert hub.offline_requested()


def test_write_tabular_manifest_needs_no_encoder_and_no_network(monkeypatch, no_download, tmp_path):
    """Array inputs build no encoder: an extraction of them never asks the hub."""
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("no encoder, no network"))
    manifest, spec = write_tabular_manifest(tmp_path / "data")
    r = runner.invoke(
        app,
        [
            "extract",
            "--dataset",
            "manifest",
            "--manifest",
            str(manifest),
            "--spec",
            str(spec),
            "--out",
            str(tmp_path / "t.zarr"),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output


def test_weight_files_come_from_the_cache_or_are_refused_in_one_line(monkeypatch, tmp_path):
    """``hub_file`` (open_clip's checkpoint) and ``url_file`` (torchxrayvision's release) without a network."""
    f = tmp_path / "open_clip_pytorch_model.bin"
    f.write_bytes(b"weights")
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("cached: no network check"))
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda repo, name: str(f))
    assert hub.hub_file("biomedclip", "org/clip", f.name, "image") == str(f)
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda repo, name: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="image encoder 'biomedclip' is not in the local Hugging Face"):
        hub.hub_file("biomedclip", "org/clip", f.name, "image")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: True)

    def gated(*a, **k):
        raise OSError("Cannot access gated repo for url https://huggingface.co/org/clip/resolve/main/w.bin")

    monkeypatch.setattr(hub, "hf_hub_download", gated)
    with pytest.raises(ValueError, match=r"^image encoder 'x' \(org/clip\) is gated .* no access: ask for it$"):
        hub.hub_file("x", "org/clip", "w.bin", "image", access="ask for it")
    with pytest.raises(ValueError, match=r"^image encoder 'x': cannot download w\.bin from org/clip \(OSError"):
        hub.hub_file("x", "org/clip", "w.bin", "image")  # no access note: the plain one-line error
    assert hub.url_file("xrv", "https://example.invalid/w.pt", f, "image") == f  # present: used as it is
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / "models_data" / "w.pt"
    with pytest.raises(ValueError, match=r"offline mode is set; download https://example\.invalid/w\.pt and put it at"):
        hub.url_file("xrv", "https://example.invalid/w.pt", dest, "image")
    assert not dest.exists()
