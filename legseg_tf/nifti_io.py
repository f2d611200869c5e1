"""NIfTI input/output: the only module that reads or writes image files.

Images are loaded into canonical RAS+ arrays (axes x, y, z; larger index = further to the
patient's right / anterior / superior) and every label map is written back through the exact
inverse of that reorientation, so that it has the input's shape, affine and sform/qform codes.

The segmentation stages work in the QMRITools array layout (z, y, x) with rows running from
anterior to posterior and columns from the patient's right to left; :func:`ras_to_qmri` and
:func:`qmri_to_ras` convert between the two without any resampling.
"""
from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

logger = logging.getLogger(__name__)

_RAS = orientations.axcodes2ornt(("R", "A", "S"))


class ImageError(ValueError):
    """An input image cannot be used (unreadable, wrong dimensionality, no valid affine)."""


@dataclass(frozen=True)
class Geometry:
    """Where an image came from and how it was reoriented.

    Attributes:
        shape: spatial shape of the file's data array (first three axes).
        affine: the file's voxel-to-world affine (sform if set, else qform).
        header: a copy of the file's header (dtype, codes, units, descriptions).
        to_ras: nibabel orientation transform from file axes to canonical RAS axes.
        ras_affine: affine of the canonical RAS array.
        n_volumes: length of the 4th axis of the input (1 for 3-D images).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    header: nib.Nifti1Header
    to_ras: np.ndarray
    ras_affine: np.ndarray
    n_volumes: int = 1

    @property
    def zooms_ras(self) -> tuple[float, float, float]:
        """Voxel size (x, y, z) in mm of the canonical RAS array."""
        return tuple(float(z) for z in nib.affines.voxel_sizes(self.ras_affine))

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Orientation codes of the file's axes, e.g. ("L", "P", "S")."""
        return tuple(orientations.aff2axcodes(self.affine))


def load_canonical(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Load a NIfTI image as a canonical RAS float32 array.

    4-D images (e.g. multi-echo series) contribute their first volume, as QMRITools does.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        ``(volume, geometry)`` with ``volume`` of shape (x, y, z), float32, canonical RAS.

    Raises:
        ImageError: unreadable file, fewer than 3 or more than 4 dimensions, singular affine.
    """
    path = Path(path)
    try:
        image = nib.load(str(path))
    except (OSError, nib.filebasedimages.ImageFileError, EOFError, ValueError) as error:
        raise ImageError(f"cannot read NIfTI image {path}: {error}") from error
    shape = image.shape
    if len(shape) == 4 and shape[3] >= 1:
        n_volumes = int(shape[3])
    elif len(shape) == 3:
        n_volumes = 1
    else:
        raise ImageError(f"expected a 3-D or 4-D image, got shape {shape} in {path}")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ImageError(f"image {path} has no usable affine (singular or non-finite)")
    try:
        data = np.asarray(image.dataobj[..., 0] if len(shape) == 4 else image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise ImageError(f"cannot read the data of {path}: {error}") from error
    data = np.nan_to_num(data.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    to_ras = orientations.ornt_transform(orientations.io_orientation(affine), _RAS)
    ras = np.ascontiguousarray(orientations.apply_orientation(data, to_ras))
    ras_affine = affine @ orientations.inv_ornt_aff(to_ras, data.shape[:3])
    geometry = Geometry(
        shape=tuple(int(s) for s in shape[:3]),
        affine=affine,
        header=image.header.copy(),
        to_ras=to_ras,
        ras_affine=ras_affine,
        n_volumes=n_volumes,
    )
    logger.debug("loaded %s: shape %s, axcodes %s", path, shape, geometry.axcodes)
    return ras, geometry


def from_ras(array_ras: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Undo the canonical reorientation: RAS (x, y, z[, ...]) -> the file's axis order."""
    back = orientations.ornt_transform(_RAS, orientations.io_orientation(geometry.affine))
    return np.ascontiguousarray(orientations.apply_orientation(array_ras, back))


def label_dtype(max_label: int) -> type[np.integer]:
    """Smallest unsigned integer type that holds ``max_label``."""
    return np.uint8 if max_label <= np.iinfo(np.uint8).max else np.uint16


def save_labels(labels_ras: np.ndarray, geometry: Geometry, path: str | Path) -> Path:
    """Write a canonical-RAS label map in the input's exact grid, atomically.

    The output has the input's spatial shape, affine, sform/qform codes and units, an unsigned
    integer dtype, and no intensity scaling. It is written to a temporary file in the target
    folder and renamed, so a failure never leaves a partial file.

    Args:
        labels_ras: (x, y, z) integer label map on the canonical RAS grid of ``geometry``.
        geometry: the record returned by :func:`load_canonical` for the input image.
        path: destination ``.nii.gz`` (or ``.nii``) path.
    """
    labels_ras = np.asarray(labels_ras)
    expected = tuple(int(s) for s in orientations.apply_orientation(
        np.empty(geometry.shape, dtype=np.uint8), geometry.to_ras).shape)
    if labels_ras.shape != expected:
        raise ValueError(f"label map shape {labels_ras.shape} does not match the RAS grid {expected}")
    if labels_ras.size and labels_ras.min() < 0:
        raise ValueError("label maps must not contain negative labels")
    max_label = int(labels_ras.max()) if labels_ras.size else 0
    dtype = label_dtype(max_label)
    data = from_ras(labels_ras, geometry).astype(dtype)
    return save_array(data, geometry, path, dtype=dtype, intent="label")


def save_array(
    data: np.ndarray,
    geometry: Geometry,
    path: str | Path,
    *,
    dtype: type[np.generic] = np.float32,
    intent: str = "none",
) -> Path:
    """Write an array already in the file's axis order with the input header, atomically.

    Args:
        data: array with the input's spatial shape as its first three axes (a 4th axis is kept).
        geometry: the input's geometry record.
        path: destination path.
        dtype: on-disk data type.
        intent: NIfTI intent name ("label" for label maps, "none" otherwise).
    """
    path = Path(path)
    if tuple(data.shape[:3]) != geometry.shape:
        raise ValueError(f"array shape {data.shape} does not match the input grid {geometry.shape}")
    header = geometry.header.copy()
    header.set_data_dtype(dtype)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(np.asarray(data, dtype=dtype), affine=None, header=header)
    sform, sform_code = geometry.header.get_sform(coded=True)
    qform, qform_code = geometry.header.get_qform(coded=True)
    if sform is not None:
        image.set_sform(sform, code=int(sform_code))
    else:
        image.set_sform(geometry.affine, code=0)
    if qform is not None:
        image.set_qform(qform, code=int(qform_code))
    else:
        image.set_qform(geometry.affine, code=0)
    if sform is None and qform is None:
        image.set_sform(geometry.affine, code=1)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"] = 0
    image.header["cal_max"] = float(np.max(data)) if data.size else 0.0
    image.header.set_intent(intent)
    if data.ndim == 3:
        image.header.set_dim_info(*geometry.header.get_dim_info())
        image.header["dim"][4:] = 1
        image.header["pixdim"][4:] = geometry.header["pixdim"][4:]
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        nib.save(image, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def ras_to_qmri(array_ras: np.ndarray) -> np.ndarray:
    """Canonical RAS (x, y, z[, c]) -> QMRITools layout (z, y, x[, c]).

    Slice 0 is the most inferior, row 0 the most anterior and column 0 the patient's
    right-most column (spec section 0.2).
    """
    axes = (2, 1, 0) + tuple(range(3, array_ras.ndim))
    return np.ascontiguousarray(np.transpose(array_ras, axes)[:, ::-1, ::-1])


def qmri_to_ras(array_qmri: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ras_to_qmri`: QMRITools layout (z, y, x[, c]) -> RAS (x, y, z[, c])."""
    flipped = array_qmri[:, ::-1, ::-1]
    axes = (2, 1, 0) + tuple(range(3, array_qmri.ndim))
    return np.ascontiguousarray(np.transpose(flipped, axes))


def qmri_spacing(geometry: Geometry) -> tuple[float, float, float]:
    """Voxel size (dz, dy, dx) in mm for the QMRITools layout of ``geometry``."""
    dx, dy, dz = geometry.zooms_ras
    return (dz, dy, dx)
