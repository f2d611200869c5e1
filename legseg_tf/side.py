"""Which legs an image shows: the body midline, the body mask's geometry and the side decision.

Arrays are in the QMRITools layout (z, y, x) built from the canonical RAS orientation, so
column 0 is the patient's right-most column: the columns left of the cut (low index) are the
patient's **Right** leg and the others the **Left** leg. Side names therefore follow from the
affine, never from the raw file order.

The classifier's side vote is cross-checked against the geometry of the body mask
(:func:`geometric_side`, :func:`decide_side`): a single-leg volume is named after the side of
the body midline its tissue lies on, and two clearly separated legs are always split. The cut
itself and the crops of each side are :mod:`legseg_tf.split`'s.

Column indices are 0-based; a cut ``c`` means "Right = columns < c, Left = columns >= c".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

BOTH, LEFT, RIGHT = "Both", "Left", "Right"
#: Side name -> the side code of the parts and label names ("L"/"R").
SIDE_CODES = {LEFT: "L", RIGHT: "R"}


@dataclass(frozen=True)
class SideConfig:
    """Side-decision thresholds.

    Attributes:
        two_leg_min_fraction: each side of the cut must hold at least this fraction of the
            mask for the geometry to call the volume two-legged.
        two_leg_max_valley: and the mask profile (voxels per column) at the cut must be at
            most this fraction of the smaller side's peak. Legs pressed together give about
            0.5; a single leg, whose profile has one hump, gives about 1.
        confident_fraction: a single leg counts as clearly on one side of the midline when at
            least this fraction of its mask lies there.
        ambiguous_fraction: without a classifier, a single leg with between this fraction and
            1 - this fraction of its mask right of the midline cannot be named.
    """

    two_leg_min_fraction: float = 0.05
    two_leg_max_valley: float = 0.8
    confident_fraction: float = 0.9
    ambiguous_fraction: float = 0.35


@dataclass(frozen=True)
class GeometrySide:
    """What the body mask says about the legs in the field of view.

    Attributes:
        two_legs: two lobes separated by a valley at the cut.
        single_side: side of the midline holding most of the mask ("Left" or "Right").
        confident: at least ``confident_fraction`` of the mask lies on ``single_side``.
        right_fraction: fraction of the mask on the patient's right of the midline.
        cut_right_fraction: fraction of the mask right of the cut (columns < cut).
        valley_ratio: mask profile at the cut / smaller peak of the two sides.
        midline_column: column (fractional) taken as the body midline.
        cut: the left/right cut column.
    """

    two_legs: bool
    single_side: str
    confident: bool
    right_fraction: float
    cut_right_fraction: float
    valley_ratio: float
    midline_column: float
    cut: int

    def to_report(self) -> dict:
        return {
            "two_legs": self.two_legs,
            "single_side": self.single_side,
            "confident": self.confident,
            "right_fraction": round(self.right_fraction, 4),
            "cut_right_fraction": round(self.cut_right_fraction, 4),
            "valley_ratio": round(self.valley_ratio, 4),
            "midline_column": round(self.midline_column, 2),
            "cut": self.cut,
        }


@dataclass(frozen=True)
class SideDecision:
    """Final side decision.

    Attributes:
        side: "Both" (split), "Left" or "Right" (whole volume is that leg).
        classifier_side: the classifier's majority vote, or None without a classifier.
        source: "classifier+geometry" when they agree, "geometry" when geometry decided,
            "classifier" when geometry was inconclusive.
        warnings: human-readable disagreements.
    """

    side: str
    classifier_side: str | None
    source: str
    warnings: tuple[str, ...] = ()


def midline_column(ras_affine: np.ndarray, shape_ras: tuple[int, int, int]) -> float:
    """Column of the QMRITools layout where the world x coordinate is 0 (scanner midline).

    Patients lie centred left-right on the table, so world x = 0 approximates the body
    midline. Evaluated at the centre row and slice.

    Args:
        ras_affine: 4x4 affine of the canonical RAS array.
        shape_ras: (nx, ny, nz) of the canonical RAS array.

    Returns:
        Fractional column (may lie outside the image when the header origin is arbitrary).
    """
    affine = np.asarray(ras_affine, dtype=np.float64)
    nx, ny, nz = shape_ras
    step = affine[0, 0]
    if abs(step) < 1e-9:
        raise ValueError("the RAS affine has no x component along the first axis")
    offset = affine[0, 1] * (ny - 1) / 2 + affine[0, 2] * (nz - 1) / 2 + affine[0, 3]
    index_ras = -offset / step
    return float(nx - 1 - index_ras)


def resolve_midline(column: float | None, nx: int) -> tuple[float, str | None]:
    """The midline column to use: ``column`` when it lies in the image, else the image centre.

    Returns:
        (column, warning or None).
    """
    centre = (nx - 1) / 2
    if column is None:
        return centre, None
    if not -0.5 <= column <= nx - 0.5:
        return centre, (
            f"world x = 0 lies outside the image (column {column:.1f} of {nx}); the header "
            "origin is not anatomical, so the image centre is taken as the body midline"
        )
    return float(column), None


def geometric_side(
    mask: np.ndarray, cut: int, midline: float, config: SideConfig = SideConfig()
) -> GeometrySide:
    """Two legs or one, and which side of the midline, from a (z, y, x) body mask.

    Args:
        mask: boolean (z, y, x) body mask (QMRITools layout, column 0 = patient right).
        cut: left/right cut column (:func:`legseg_tf.split.find_middle`).
        midline: fractional column of the body midline.

    Raises:
        ValueError: empty mask or cut outside 1..nx-1.
    """
    mask = np.asarray(mask, dtype=bool)
    nx = mask.shape[2]
    if not 1 <= cut <= nx - 1:
        raise ValueError(f"cut {cut} outside 1..{nx - 1}")
    profile = mask.sum(axis=(0, 1), dtype=np.float64)
    total = profile.sum()
    if total == 0:
        raise ValueError("empty body mask")
    columns = np.arange(nx)
    right_weight = np.clip(midline + 0.5 - columns, 0.0, 1.0)
    right_fraction = float((profile * right_weight).sum() / total)
    cut_right = float(profile[:cut].sum() / total)
    smooth = ndimage.gaussian_filter1d(profile, 1.0, mode="nearest")
    valley = float(min(smooth[cut - 1], smooth[cut]))
    smaller_peak = min(float(smooth[:cut].max()), float(smooth[cut:].max()))
    valley_ratio = valley / smaller_peak if smaller_peak > 0 else float("inf")
    two_legs = (
        min(cut_right, 1 - cut_right) >= config.two_leg_min_fraction
        and valley_ratio <= config.two_leg_max_valley
    )
    single = RIGHT if right_fraction >= 0.5 else LEFT
    confident = max(right_fraction, 1 - right_fraction) >= config.confident_fraction
    return GeometrySide(
        two_legs=two_legs, single_side=single, confident=confident,
        right_fraction=right_fraction, cut_right_fraction=cut_right,
        valley_ratio=valley_ratio, midline_column=float(midline), cut=int(cut),
    )


class SideUndeterminedError(ValueError):
    """Which leg a single-leg volume shows cannot be told (no classifier, leg on the midline)."""


def decide_side(
    classifier_side: str | None,
    geometry: GeometrySide,
    midline_structure: bool = False,
    config: SideConfig = SideConfig(),
) -> SideDecision:
    """Combine the classifier's side vote with the mask geometry.

    Geometry decides whenever it is conclusive; the classifier only settles what geometry
    cannot see (a single leg lying across the midline, e.g. a leg placed at the scanner
    isocentre):

    * two legs (a valley between two lobes) -> "Both"; warn when the classifier said one leg;
    * one lobe clearly (>= ``confident_fraction``) on one side of the midline -> that side;
      warn when the classifier said "Both" or the other side;
    * one lobe across the midline: the classifier's side ("Both" included); without a
      classifier, "Both" for regions centred on the midline (``midline_structure``: the hip),
      the side holding most tissue when that is at least ``1 - ambiguous_fraction`` (with a
      warning), and :class:`SideUndeterminedError` otherwise.

    Raises:
        SideUndeterminedError: see above.
    """
    if classifier_side not in (None, BOTH, LEFT, RIGHT):
        raise ValueError(f"unknown classifier side {classifier_side!r}")
    geo = geometry
    where = f"{geo.right_fraction:.0%} of the body mask lies right of the midline"
    if geo.two_legs:
        if classifier_side in (LEFT, RIGHT):
            return SideDecision(BOTH, classifier_side, "geometry", (
                f"classifier says one {classifier_side} leg but the body mask shows two legs "
                f"(valley ratio {geo.valley_ratio:.2f} at the cut); splitting both legs",))
        source = "geometry" if classifier_side is None else "classifier+geometry"
        return SideDecision(BOTH, classifier_side, source)
    side = geo.single_side
    if geo.confident:
        if classifier_side == BOTH:
            return SideDecision(side, classifier_side, "geometry", (
                f"classifier says both legs but the body mask is one leg on the patient's "
                f"{side.lower()} ({where}); segmenting one {side} leg",))
        if classifier_side is not None and classifier_side != side:
            return SideDecision(side, classifier_side, "geometry", (
                f"classifier says {classifier_side} leg but {where}; naming it {side} from "
                "the image geometry",))
        source = "geometry" if classifier_side is None else "classifier+geometry"
        return SideDecision(side, classifier_side, source)
    if classifier_side is not None:
        return SideDecision(classifier_side, classifier_side, "classifier")
    if midline_structure:
        return SideDecision(BOTH, None, "geometry")
    if abs(geo.right_fraction - 0.5) >= 0.5 - config.ambiguous_fraction:
        return SideDecision(side, None, "geometry", (
            f"one leg across the midline ({where}) and no side classifier installed; "
            f"named {side} from the side holding most tissue",))
    raise SideUndeterminedError(
        f"cannot tell which leg this is: one leg lies across the scanner midline ({where}) "
        "and no side classifier is installed; install the classifier model"
    )
