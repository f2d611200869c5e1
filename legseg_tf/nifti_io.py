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


#: Largest number of voxels of one 3-D volume legseg reads (a leg stack has 10^7-10^8): a
#: header declaring more is corrupt or not a leg image, and reading it would exhaust memory.
MAX_VOXELS = 2**30
#: Orientation codes accepted by ``--assume-orientation`` (one letter of each pair).
_AXIS_PAIRS = ({"L", "R"}, {"A", "P"}, {"S", "I"})


def parse_orientation(codes: str) -> tuple[str, str, str]:
    """Check an orientation code such as ``RAS`` or ``LPS`` (the direction each array axis runs
    to, nibabel convention); raise ValueError with a one-line reason otherwise."""
    letters = tuple(str(codes).upper())
    pairs = [next((i for i, pair in enumerate(_AXIS_PAIRS) if c in pair), -1) for c in letters]
    if len(letters) != 3 or sorted(pairs) != [0, 1, 2]:
        raise ValueError(
            f"invalid orientation {codes!r}: three letters, one of L/R, one of A/P and one of "
            "S/I, e.g. RAS or LPS"
        )
    return letters  # type: ignore[return-value]


def assumed_affine(codes: str, zooms, shape) -> np.ndarray:
    """Affine of an image whose axes run towards ``codes`` (e.g. ``RAS``) with voxel sizes
    ``zooms``, centred on the world origin."""
    ornt = orientations.axcodes2ornt(parse_orientation(codes))
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, (world, flip) in enumerate(ornt):
        affine[int(world), axis] = float(flip) * float(zooms[axis])
    centre = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def _header_affine(image, path: Path, assume_orientation: str | None) -> np.ndarray:
    """The image's voxel-to-world affine, refused when it cannot tell left from right.

    Raises:
        ImageError: no orientation in the header (sform_code and qform_code both 0) and no
            ``assume_orientation``; zero or non-finite voxel sizes; a singular or non-finite
            affine.
    """
    header = image.header
    if not isinstance(header, nib.Nifti1Header):  # Nifti2Header is a subclass
        raise ImageError(f"{path} is not a NIfTI-1/2 image ({type(header).__name__})")
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    # nibabel silently turns zero voxel sizes into 1 on load: check the bytes of the file
    with nib.openers.ImageOpener(str(path)) as handle:
        raw = type(header).from_fileobj(handle, check=False)
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if sform_code == 0 and (not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0)):
        raise ImageError(
            f"{path} has unusable voxel sizes in its header (pixdim[1:4] = "
            f"{', '.join(f'{v:g}' for v in pixdim)}): zero or non-finite"
        )
    if sform_code == 0 and qform_code == 0:
        if assume_orientation is None:
            raise ImageError(
                f"{path} has no orientation in its header (sform_code = 0 and qform_code = 0), "
                "so left and right are unknown; refused (use --assume-orientation, e.g. RAS, "
                "if you know how its axes run)"
            )
        affine = assumed_affine(assume_orientation, np.abs(pixdim), image.shape)
        logger.warning(
            "%s has no orientation in its header (sform_code = 0 and qform_code = 0); "
            "assuming %s as requested (--assume-orientation)", path, "".join(
                parse_orientation(assume_orientation)))
        return affine
    source = f"sform (sform_code = {sform_code})" if sform_code else f"qform (qform_code = {qform_code})"
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ImageError(
            f"{path} has no usable affine: its {source} is singular or non-finite"
        )
    return affine


def _image_array(image, path: Path) -> np.ndarray:
    """First 3-D volume of ``image`` as float32, with every unusual data type decided.

    Complex images are used as their magnitude (with a warning); RGB and other structured
    types are refused; NaN/Inf voxels become 0 with a warning (an image with no finite voxel
    is refused).
    """
    dtype = image.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biufc":
        raise ImageError(f"{path} has data type {dtype} (RGB or structured), not intensities; refused")
    shape = image.shape
    n_voxels = int(np.prod(shape[:3], dtype=np.int64))
    if n_voxels > MAX_VOXELS:
        raise ImageError(
            f"{path} declares {' x '.join(str(s) for s in shape[:3])} = {n_voxels} voxels per "
            f"volume, more than legseg reads ({MAX_VOXELS}); corrupt header or not a leg stack"
        )
    if not str(path).endswith(".gz") and hasattr(image.dataobj, "offset"):
        needed = int(image.dataobj.offset) + n_voxels * int(np.dtype(dtype).itemsize)
        size = path.stat().st_size
        if size < needed:
            raise ImageError(
                f"{path} is truncated: its header declares {needed} bytes up to the end of the "
                f"first volume, the file has {size}"
            )
    try:
        data = np.asarray(image.dataobj[..., 0] if len(shape) == 4 else image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, MemoryError) as error:
        raise ImageError(f"cannot read the data of {path}: {error}") from error
    if np.iscomplexobj(data):
        logger.warning("%s holds complex values (%s); using their magnitude", path, data.dtype)
        data = np.abs(data)
    data = data.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        if bad == data.size:
            raise ImageError(f"{path} holds no finite voxel (all NaN or Inf); refused")
        logger.warning("%s has %d NaN/Inf voxel(s) (%.2g %% of the image); they are set to 0",
                       path, bad, 100.0 * bad / data.size)
        data = np.where(finite, data, np.float32(0))
    return data


def load_canonical(path: str | Path, assume_orientation: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Load a NIfTI image as a canonical RAS float32 array.

    4-D images (e.g. multi-echo series) contribute their first volume, as QMRITools does.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        assume_orientation: axis codes (e.g. ``"RAS"``) to use when the header has no
            orientation (sform_code and qform_code both 0); such headers are refused without it.

    Returns:
        ``(volume, geometry)`` with ``volume`` of shape (x, y, z), float32, canonical RAS.

    Raises:
        ImageError: unreadable or truncated file, fewer than 3 or more than 4 dimensions, no
            orientation in the header, zero voxel sizes, singular or non-finite affine, RGB
            data, no finite voxel, more than :data:`MAX_VOXELS` voxels.
    """
    path = Path(path)
    try:
        image = nib.load(str(path))
    except (OSError, nib.filebasedimages.ImageFileError, EOFError, ValueError, zlib.error) as error:
        raise ImageError(f"cannot read NIfTI image {path}: {error}") from error
    shape = image.shape
    if len(shape) == 4 and shape[3] >= 1:
        n_volumes = int(shape[3])
    elif len(shape) == 3:
        n_volumes = 1
    else:
        raise ImageError(f"expected a 3-D or 4-D image, got shape {shape} in {path}")
    if min(shape[:3]) < 1:
        raise ImageError(f"{path} has an empty axis (shape {shape})")
    affine = _header_affine(image, path, assume_orientation)
    data = _image_array(image, path)
    to_ras = _to_ras_transform(affine)
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


def _to_ras_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the axes of an array on ``affine`` to RAS."""
    return orientations.ornt_transform(orientations.io_orientation(affine), _RAS)


def to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient an array stored on ``affine``'s grid (file axis order; axes beyond the third,
    e.g. label channels, kept) to the canonical RAS axes (x, y, z[, ...]) of
    :func:`load_canonical`."""
    return np.ascontiguousarray(orientations.apply_orientation(array, _to_ras_transform(affine)))


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
    from legseg_tf.derivatives import atomic_write

    # nibabel picks compression by the name: the temporary file keeps the .nii(.gz) ending
    suffix = ".tmp.nii.gz" if path.name.endswith(".nii.gz") else ".tmp.nii"
    return atomic_write(path, lambda tmp: nib.save(image, str(tmp)), suffix=suffix)


def ras_to_qmri(array_ras: np.ndarray) -> np.ndarray:
    """Canonical RAS (x, y, z[, c]) -> QMRITools layout (z, y, x[, c]).

    Slice 0 is the most inferior, row 0 the most anterior and column 0 the patient's
    right-most column (QMRITools ``ImportNiiDefault`` layout).
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
