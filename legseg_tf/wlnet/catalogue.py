"""The QMRITools network files ``legseg-import`` recognises, and the checks shared by the
``.wlnet`` and ONNX importers (:mod:`legseg_tf.wlnet.cli`, :mod:`legseg_tf.onnxnet.importer`).

Importing this module imports neither TensorFlow nor Keras.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from legseg_tf.wlnet.expr import WlnetError

LICENCE_NOTICE = (
    "QMRITools, Copyright (c) 2016, Martijn Froeling. Redistributed under the BSD 3-Clause "
    "licence: redistributions must retain this copyright notice, the list of conditions and "
    "the disclaimer of the QMRITools LICENSE.txt; the author's name may not be used to endorse "
    "derived products without permission. THE SOFTWARE IS PROVIDED \"AS IS\" WITHOUT WARRANTY "
    "OF ANY KIND.")
CITATION = ("Froeling M. QMRTools: a Mathematica toolbox for quantitative MRI analysis. "
            "J Open Source Softw 2019;4(38):1204. doi:10.21105/joss.01204")


@dataclass(frozen=True)
class KnownNet:
    """How a QMRITools network file is installed."""

    role: str
    label_table: str | None


#: QMRITools release nets by file stem (the assets of the release paclet's ``PacletInfo.wl``).
KNOWN_NETS = {
    "Body_Pos_Side": KnownNet("classifier", None),
    "N4_Hip_3D": KnownNet("hip", "N4_Hip"),
    "N5_UpperLeg_3D": KnownNet("upper_leg", "N5_UpperLeg"),
    "N6_LowerLeg_3D": KnownNet("lower_leg", "N6_LowerLeg"),
}
#: Nets of QMRITools <= 4.5.3: recognised, but their label files are not legseg tables, so
#: they are converted as "other" models with the role they used to play recorded.
LEGACY_NETS = {
    "Muscles_leg_upper": "upper_leg", "Muscles_leg_lower": "lower_leg",
    "Bones_leg_full": "bones", "Leg_side_full": "side_classifier",
    "Leg_pos_full": "position_classifier",
}
SEGMENTATION_ROLES = ("upper_leg", "lower_leg", "hip")
#: Label table of each pipeline role (the classifier has none).
ROLE_TABLES = {k.role: k.label_table for k in KNOWN_NETS.values()}


def check_classes(path: Path, config: dict, table: str) -> None:
    """A segmentation net must predict background + every class of its label table."""
    from legseg_tf.labels import TRAIN_TABLES

    expected = len(TRAIN_TABLES[table]) + 1
    outputs = config["outputs"]
    got = outputs[0]["wolfram_shape"][-1] if len(outputs) == 1 and outputs[0]["wolfram_shape"] \
        else None
    if got != expected:
        raise WlnetError(f"{path}: the net predicts {got} classes but label table {table} has "
                         f"{expected} (with background); not installed")
