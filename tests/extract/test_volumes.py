"""Reading volumes: DICOM series sorted by position, mixed series and garbage refused, NIfTI axes, slice
selection."""

from __future__ import annotations

import numpy as np
import pytest

from omnifuse.extract.images import InputError
from omnifuse.extract.volumes import read_dicom_series, read_volume, select_slices
from tests.helpers import write_dicom_series


def test_dicom_series_sorted_by_position(tmp_path):
    write_dicom_series(tmp_path / "s", 4)  # file names in reverse z order
    vol = read_dicom_series(tmp_path / "s")
    assert vol.shape == (4, 128, 128)
    # slice k was shifted by 100 k in stored values; the rescale (slope 1) keeps the differences
    means = vol.reshape(4, -1).mean(1)
    assert np.allclose(np.diff(means), 100.0, atol=1e-3)


def test_dicom_mixed_series_and_garbage(tmp_path):
    write_dicom_series(tmp_path / "m", 3, series_uid="9.9.9")
    with pytest.raises(InputError, match="mixed DICOM series"):
        read_volume(tmp_path / "m")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "x.dcm").write_text("garbage")
    with pytest.raises(InputError, match="unreadable DICOM"):
        read_volume(tmp_path / "g")
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match="no DICOM files"):
        read_volume(tmp_path / "e")


def test_nifti_volume(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = np.zeros((10, 12, 5), dtype=np.float32)  # x, y, z
    for z in range(5):
        data[:, :, z] = z
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")
    vol = read_volume(tmp_path / "v.nii.gz")
    assert vol.shape == (5, 12, 10)
    assert np.allclose(vol.reshape(5, -1).mean(1), np.arange(5))


def test_slice_selection():
    assert select_slices(3, 4).tolist() == [0, 1, 2]
    assert select_slices(9, 3).tolist() == [0, 4, 8]
