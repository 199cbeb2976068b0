"""The volume encoder: slices through the image encoder, a slice mask, or one mean-pooled vector."""

from __future__ import annotations

import torch

from omnifuse.extract.encoders import VolumeEncoder
from tests.helpers import IMAGE_SIZE, write_dicom_series


def test_volume_encoder_slices_and_pooling(tmp_path, image_encoder):
    write_dicom_series(tmp_path / "s", 3)
    v = VolumeEncoder(image_encoder, max_slices=4)
    slices = v.load(tmp_path / "s")
    assert slices.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    x, mask = v.encode_volume(slices)
    assert x.shape == (4, 512) and mask.tolist() == [True, True, True, False]
    assert torch.all(x[3] == 0)
    torch.testing.assert_close(x[:3], image_encoder.encode(slices), rtol=1e-4, atol=1e-5)
    pooled = VolumeEncoder(image_encoder, max_slices=4, pooling="mean")
    p, none = pooled.encode_volume(slices)
    assert none is None and p.shape == (512,)
    torch.testing.assert_close(p, x[:3].mean(0), rtol=1e-4, atol=1e-5)
