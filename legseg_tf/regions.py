"""What each ``--region`` needs, and whether the installed models provide it.

Light on purpose (the manifest is JSON; no array or network library is imported), so that a
run whose models cannot serve the requested region stops before TensorFlow is imported: exit 3
in a fraction of a second instead of after the TensorFlow start-up (issue 12).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from legseg_tf.errors import NoModelError

MODELS_HELP = (
    "install models into the models folder (--models DIR or LEGSEG_MODELS_DIR): train them "
    "with legseg-train or convert the QMRITools networks with legseg-import (README, 'Models')"
)


@dataclass(frozen=True)
class RegionPlan:
    """What one ``--region`` value segments.

    Attributes:
        regions: QMRITools region names, in processing order.
        needs_positions: the slice ranges of the regions come from the position classifier
            (several regions in one volume); otherwise the whole volume is one region.
        find_middle: cut between the legs at the FindMiddle valley; otherwise the region is
            centred on the body midline (the hip): cut at the image centre, and a volume that
            geometry cannot tell apart is treated as both sides.
    """

    regions: tuple[str, ...]
    needs_positions: bool
    find_middle: bool = True


REGION_PLANS: dict[str, RegionPlan] = {
    "legs": RegionPlan(("LowerLegs", "UpperLegs"), needs_positions=True),
    "legs-hip": RegionPlan(("LowerLegs", "UpperLegs", "Hip"), needs_positions=True),
    "upper": RegionPlan(("UpperLegs",), needs_positions=False),
    "lower": RegionPlan(("LowerLegs",), needs_positions=False),
    "hip": RegionPlan(("Hip",), needs_positions=False, find_middle=False),
}
#: Model-manifest role of each region's network.
REGION_ROLES = {"LowerLegs": "lower_leg", "UpperLegs": "upper_leg", "Hip": "hip"}


def required_roles(region: str, with_classifier: bool = True) -> list[str]:
    """Manifest roles needed for ``region`` (the classifier only where positions are needed)."""
    if region not in REGION_PLANS:
        raise ValueError(f"unknown region {region!r}; known: {sorted(REGION_PLANS)}")
    plan = REGION_PLANS[region]
    roles = [REGION_ROLES[r] for r in plan.regions]
    if with_classifier and plan.needs_positions:
        roles.append("classifier")
    return roles


def covered_regions(manifest) -> list[str]:
    """The ``--region`` values the models of ``manifest`` can serve."""
    return [region for region in REGION_PLANS
            if all(manifest.get(role) is not None for role in required_roles(region))]


def check_models(region: str, models_dir: str | os.PathLike | None):
    """The manifest of ``models_dir`` when it lists every model ``region`` needs.

    Reads only the manifest (every file it names must exist; checksums and weights are
    checked when a model is loaded), so it costs milliseconds and imports no TensorFlow.

    Returns:
        The :class:`legseg_tf.model_store.Manifest`.

    Raises:
        NoModelError: no models folder, no usable manifest, or a needed role missing; the
            message names the missing roles, the regions the installed models do cover and
            how to install models.
    """
    from legseg_tf import model_store

    if models_dir is None:
        raise NoModelError(f"no models folder configured; {MODELS_HELP}")
    try:
        manifest = model_store.load_manifest(models_dir)
    except model_store.ManifestError as error:
        raise NoModelError(f"no usable model manifest in {models_dir}: {error}; {MODELS_HELP}") \
            from error
    missing = [role for role in required_roles(region) if manifest.get(role) is None]
    if missing:
        hint = (" (the slice classifier finds the lower-leg, knee, thigh and hip slices; a "
                "volume of one region can use --region upper, lower or hip without it)"
                if "classifier" in missing else "")
        covered = covered_regions(manifest)
        cover = (f"; the installed models cover --region {', '.join(covered)}" if covered
                 else "")
        raise NoModelError(
            f"region {region!r} needs model role(s) {missing}, which {manifest.path} "
            f"does not list{hint}{cover}; {MODELS_HELP}"
        )
    return manifest
