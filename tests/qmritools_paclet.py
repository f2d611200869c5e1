"""TEST-ONLY builder of a fake QMRITools release paclet (networks with random seeded weights).

The layout follows the QMRITools release: a zip whose ``QMRITools/`` folder holds
``PacletInfo.wl`` (asset names as in QMRITools/PacletInfo.wl: Body, SegThighMuscle3D,
SegLegMuscle3D, SegHipMuscle3D) and ``NeuralNetworks/*.wlnet``. The networks are written by
``tests/wlnet_writer.py`` in the encodings of Wolfram >= 11.3.2 (multiport layers, GELU as a
``ScalarFunctionObject``), with the topology of QMRITools' NeuralNetworkTools.wl:

* ``Body_Pos_Side`` - ``MakeClassifyNetwork``: 128x128 grey Image encoder, "Conv" trunk
  (Conv 7/5/5/3/3 with 16/32/32/64/64 channels, BN, GELU, max pooling 2/2/2/2/4, Flatten) and
  two heads "Side" (Left, Right, Both) and "Position" (Lower, Knee, Upper, Hip, Torso,
  Shoulder, Neck, Head), each Linear 256/128/64/32 + BN + GELU, Linear, Softmax, Class decoder;
* ``N5_UpperLeg_3D`` (22 classes), ``N6_LowerLeg_3D`` (19), ``N4_Hip_3D`` (15) - ``MakeUnet``
  of the HEAD code (generation "A"): ResNet blocks, batch normalisation (as
  ``TrainSegmentationNetwork`` passes it), dropout 0.2, FeatureSchedule {32, 64, 128, 192, 320}
  and DownsampleSchedule {1, {2,2,2}, {1,2,2}, {2,2,2}, {1,2,2}} (z, y, x), input 1x32x112x112.

``widths="small"`` keeps every layer and port but narrows the UNET features to
(4, 6, 8, 10, 12) and the classifier heads to (16, 8, 8, 8) so that a CI test builds and
converts the paclet in seconds.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from tests import wlnet_writer as W

VERSION = "4.9.1"
SIDE_LABELS = ("Left", "Right", "Both")
POSITION_LABELS = ("Lower", "Knee", "Upper", "Hip", "Torso", "Shoulder", "Neck", "Head")
#: file stem -> (asset name in PacletInfo.wl, classes with background)
SEGMENTATION_NETS = {
    "N5_UpperLeg_3D": ("SegThighMuscle3D", 22),
    "N6_LowerLeg_3D": ("SegLegMuscle3D", 19),
    "N4_Hip_3D": ("SegHipMuscle3D", 15),
}
FEATURES = {"qmritools": (32, 64, 128, 192, 320), "small": (4, 6, 8, 10, 12)}
HEADS = {"qmritools": (256, 128, 64, 32), "small": (16, 8, 8, 8)}
DOWNSAMPLE = ((1, 1, 1), (2, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2))
PATCH = (32, 112, 112)


def paclet_info() -> str:
    """A ``PacletInfo.wl`` like the release's (name, version, kernel and asset extensions)."""
    assets = [("Body", "Body_Pos_Side")] + [(asset, stem) for stem, (asset, _) in
                                            SEGMENTATION_NETS.items()]
    entries = ",\n      ".join(f'{{"{a}", "NeuralNetworks/{s}.wlnet"}}' for a, s in assets)
    return (f'PacletObject[<|\n  "Name" -> "QMRITools",\n  "Version" -> "{VERSION}",\n'
            f'  "WolframVersion" -> "14.0+",\n  "Extensions" -> {{\n'
            f'    {{"Kernel", "Root" -> "Kernel", "Context" -> {{"QMRITools`"}}}},\n'
            f'    {{"Asset", "Assets" -> {{\n      {entries}\n    }}}}\n  }}\n|>]\n')


def unet_spec(stem: str, *, seed: int = 0, widths: str = "qmritools") -> W.UNetSpec:
    """The writer spec of one segmentation net of the fake paclet."""
    _, classes = SEGMENTATION_NETS[stem]
    return W.UNetSpec(generation="A", n_classes=classes, features=FEATURES[widths],
                      downsample=DOWNSAMPLE, input_size=PATCH, norm="batch", dropout=0.2,
                      seed=seed + classes, encoding="multiport")


def classifier_spec(*, seed: int = 0, widths: str = "qmritools") -> W.ClassifierSpec:
    """The writer spec of the fake paclet's Body_Pos_Side."""
    return W.ClassifierSpec(image_size=128, side_labels=SIDE_LABELS,
                            position_labels=POSITION_LABELS, head=HEADS[widths], seed=seed + 1,
                            encoding="multiport")


def build_fake_paclet(path: Path, *, seed: int = 0, widths: str = "qmritools") -> Path:
    """Write a fake QMRITools release paclet to ``path`` and return ``path``.

    Args:
        path: the ``.paclet`` file to write (its folder must exist).
        seed: seeds every network's random weights (same seed, same bytes).
        widths: "qmritools" (the published channel widths) or "small" (same layers, narrow).
    """
    if widths not in FEATURES:
        raise ValueError(f"widths must be one of {sorted(FEATURES)}, got {widths!r}")
    path = Path(path)
    staging = path.with_name(path.name + ".parts")
    staging.mkdir(exist_ok=True)
    nets = {"Body_Pos_Side": W.classifier_net(classifier_spec(seed=seed, widths=widths))}
    for stem in SEGMENTATION_NETS:
        nets[stem] = W.unet_net(unet_spec(stem, seed=seed, widths=widths))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("QMRITools/PacletInfo.wl", paclet_info(),
                         compress_type=zipfile.ZIP_DEFLATED)
        for stem, net in nets.items():
            wlnet = W.write_wlnet(staging / f"{stem}.wlnet", net, version=W.VERSION)
            # float weights barely compress; stored members keep the build fast
            archive.write(wlnet, f"QMRITools/NeuralNetworks/{stem}.wlnet",
                          compress_type=zipfile.ZIP_STORED)
            wlnet.unlink()
    staging.rmdir()
    return path
