"""``omnifuse extract`` with two of the new encoders, weights read from the authors' file formats (written here
with random values: no hub, no network): the cache records each encoder's name, weights hash, authors'
preprocessing, source and licence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from typer.testing import CliRunner

from omnifuse.cache import load_cache
from omnifuse.cli import app
from omnifuse.extract.encoders import biomedclip, get_encoder_entry, hub, weights_hash, xrv
from omnifuse.extract.encoders.biomedclip import BiomedCLIPText
from omnifuse.extract.encoders.xrv import XRVDenseNet
from tests.helpers import minilm_dir

SPEC = """
name = "cxr-mini"
[modalities.cxr]
input = "image"
column = "cxr_path"
[modalities.report]
input = "text"
column = "report"
[tasks.died]
kind = "binary"
column = "died"
"""


@pytest.fixture()
def authors_files(monkeypatch, tmp_path):
    """torchxrayvision's weight file in its folder (a state dict of the real architecture) and BiomedCLIP's
    open_clip checkpoint (its text tower at two layers), both random; the tokenizer is the bundled
    bert-base-uncased vocabulary. Returns the models whose weights the files hold."""
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("no network"))
    monkeypatch.setattr(xrv, "XRV_CACHE_DIR", tmp_path / "xrv")
    (tmp_path / "xrv").mkdir()
    densenet = XRVDenseNet()
    torch.save(densenet.state_dict(), tmp_path / "xrv" / xrv.XRV_WEIGHTS_URL.rsplit("/", 1)[1])
    bert = transformers.BertConfig(vocab_size=30522, num_hidden_layers=2)
    text = BiomedCLIPText(bert)
    torch.save({f"text.{k}": v for k, v in text.state_dict().items()}, tmp_path / "open_clip_pytorch_model.bin")
    monkeypatch.setattr(biomedclip, "biomedbert_config", lambda: bert)
    monkeypatch.setattr(
        biomedclip, "biomedclip_file", lambda name, family: str(tmp_path / "open_clip_pytorch_model.bin")
    )
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    monkeypatch.setattr(biomedclip, "hub_load", lambda *a, **k: tok)
    return densenet, text


def test_extract_records_the_new_encoders_licences(authors_files, tmp_path):
    densenet, text = authors_files
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (260, 240), dtype=np.uint8), mode="L").save(data / "a.png")
    Image.fromarray(rng.integers(0, 256, (240, 240, 3), dtype=np.uint8), mode="RGB").save(data / "b.png")
    (data / "m.csv").write_text(
        "stay_id,subject_id,cxr_path,report,died\n"
        "1,p1,a.png,Small left pleural effusion.,0\n"
        "2,p2,b.png,No acute cardiopulmonary process.,1\n"
    )
    (data / "spec.toml").write_text(SPEC)
    out = tmp_path / "c.zarr"
    args = ["extract", "--dataset", "manifest", "--manifest", str(data / "m.csv"), "--spec", str(data / "spec.toml")]
    args += ["--out", str(out), "--image-encoder", "xrv-densenet121", "--text-encoder", "biomedclip-text"]
    args += ["--text-pooling", "proj", "--max-tokens", "32", "--device", "cpu", "--precision", "fp32", "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    cache = load_cache(out)
    cxr, report = cache.spec.modality("cxr"), cache.spec.modality("report")
    xrv_entry, clip_entry = get_encoder_entry("xrv-densenet121"), get_encoder_entry("biomedclip-text")
    assert (cxr.encoder, cxr.encoder_hash) == ("xrv-densenet121", weights_hash(densenet))
    assert (cxr.preprocessing["source"], cxr.preprocessing["licence"]) == (xrv_entry.source, xrv_entry.licence)
    assert cxr.preprocessing["licence"] == "Apache-2.0 (torchxrayvision, whose release holds the weights)"
    assert cxr.preprocessing["mean"] == [0.5] * 3 and cxr.preprocessing["std"] == [1 / 2048] * 3
    assert (cxr.preprocessing["image_size"], cxr.preprocessing["pooling"]) == (224, "avg")
    assert "init" not in cxr.preprocessing  # the file's weights, not random ones
    assert (report.encoder, report.encoder_hash) == ("biomedclip-text", weights_hash(text))
    assert (report.preprocessing["source"], report.preprocessing["licence"]) == (clip_entry.source, clip_entry.licence)
    assert report.preprocessing["pooling"] == "proj" and tuple(report.shape) == (512,)
    assert cache.modalities["cxr"].x.shape == (2, 1024) and cache.modalities["report"].mask.all()
