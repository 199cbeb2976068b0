"""CT/PET volumes: a DICOM series folder, a NIfTI file or a ``.npy`` array, read as slices along z.

``read_volume`` returns float32 [S, H, W] in the scanner's units (Hounsfield units for CT after the DICOM
rescale). ``volume_slices`` picks at most ``max_slices`` slices (evenly spaced over z when there are more),
maps intensities to [0, 1] (a fixed window, or the volume's own 0.5th-99.5th percentiles) and makes each slice
an image-encoder input [3, size, size].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from omnifuse.extract.images import ImagePreprocess, InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )


def read_dicom_series(folder: str | Path) -> np.ndarray:
    """All slices of one DICOM series in ``folder`` (or one multi-frame file) -> float32 [S, H, W].

    Slices are ordered by their position along the slice normal (ImagePositionPatient and
    ImageOrientationPatient), else by InstanceNumber. A folder holding several series, duplicate positions,
    slices of different sizes or an unreadable file raise ``InputError``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    files = [folder] if folder.is_file() else _dicom_files(folder)
    if not files:
        raise InputError("no DICOM files in folder")
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f))
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError, KeyError):
            raise InputError("unreadable DICOM file") from None
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise InputError("mixed DICOM series in folder")
    planes: list[np.ndarray] = []
    keys: list[float] = []
    by_position = all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for ds in datasets)
    by_instance = all("InstanceNumber" in ds for ds in datasets)
    for ds in datasets:
        try:
            pix = np.asarray(ds.pixel_array, dtype=np.float32)
        except Exception:  # pydicom raises many types for absent or undecodable pixel data
            raise InputError("DICOM pixel data cannot be decoded") from None
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        pix = pix * slope + intercept
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            if len(datasets) > 1:
                raise InputError("multi-frame DICOM file mixed with other files")
            if pix.ndim != 3:
                raise InputError("unsupported multi-frame DICOM pixel layout")
            return pix
        if pix.ndim != 2:
            raise InputError("unsupported DICOM pixel layout (colour or multi-frame)")
        planes.append(pix)
        if by_position:
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            normal = np.cross(iop[:3], iop[3:])
            keys.append(float(np.dot(np.asarray([float(v) for v in ds.ImagePositionPatient]), normal)))
        elif by_instance:
            keys.append(float(ds.InstanceNumber))
    if len({p.shape for p in planes}) > 1:
        raise InputError("DICOM slices of different sizes")
    if len(planes) > 1:
        if not (by_position or by_instance):
            raise InputError("DICOM slices cannot be ordered (no position or instance number)")
        if len(set(keys)) != len(keys):
            raise InputError("duplicate DICOM slice positions in series")
        order = np.argsort(np.asarray(keys), kind="stable")
        planes = [planes[i] for i in order]
    return np.stack(planes, 0)


def read_nifti(path: str | Path) -> np.ndarray:
    """A NIfTI volume -> float32 [S, H, W], slices along the third (z) axis in RAS+ orientation."""
    try:
        import nibabel as nib
    except ImportError as e:  # pragma: no cover - nibabel is an optional dependency
        raise ImportError("reading NIfTI volumes needs nibabel: pip install 'omnifuse[volume]'") from e
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception:  # nibabel raises several types for damaged files
        raise InputError("unreadable NIfTI file") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"NIfTI volume must be 3-D, got {data.ndim}-D")
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))


def read_volume(path: str | Path) -> np.ndarray:
    """Dispatch on the path: folder or ``.dcm`` (DICOM), ``.nii``/``.nii.gz`` (NIfTI), ``.npy`` -> [S, H, W]."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found")
    name = path.name.lower()
    if path.is_dir() or name.endswith(".dcm"):
        vol = read_dicom_series(path)
    elif name.endswith(NIFTI_SUFFIXES):
        vol = read_nifti(path)
    elif name.endswith(".npy"):
        try:
            vol = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        except (OSError, ValueError):
            raise InputError("unreadable .npy volume") from None
        if vol.ndim != 3:
            raise InputError(f".npy volume must be [S, H, W], got {vol.ndim}-D")
    else:
        raise InputError("unknown volume format (expected a DICOM folder, .dcm, .nii, .nii.gz or .npy)")
    if vol.shape[0] == 0 or vol.size == 0:
        raise InputError("empty volume")
    if not np.isfinite(vol).all():
        raise InputError("volume has non-finite values")
    return vol


def select_slices(num: int, max_slices: int) -> np.ndarray:
    """Indices of the slices kept: all when ``num <= max_slices``, else ``max_slices`` evenly spaced."""
    if num <= max_slices:
        return np.arange(num)
    return np.unique(np.round(np.linspace(0, num - 1, max_slices)).astype(np.int64))


def volume_slices(
    path: str | Path,
    prep: ImagePreprocess,
    max_slices: int,
    window: tuple[float, float] | None = None,
) -> torch.Tensor:
    """A volume path -> encoder inputs [s, 3, size, size] with ``s <= max_slices``.

    Intensities are clipped to ``window`` (e.g. (-1000, 400) HU) or to the volume's 0.5th and 99.5th
    percentiles, then scaled to [0, 1].
    """
    vol = read_volume(path)
    vol = vol[select_slices(vol.shape[0], max_slices)]
    lo, hi = window if window is not None else tuple(float(v) for v in np.percentile(vol, [0.5, 99.5]))
    vol = (np.clip(vol, lo, hi) - lo) / (hi - lo) if hi > lo else np.zeros_like(vol)
    return torch.from_numpy(np.stack([prep.from_float(s).numpy() for s in vol], 0))  # NumPy: see from_pil8
