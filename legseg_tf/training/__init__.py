"""Training of the segmentation and classifier networks (QMRITools ``TrainSegmentationNetwork``).

Modules, each with one job:

* :mod:`.data` - training cases: loading image/label NIfTI pairs into the QMRITools layout,
  crop to the body, resampling, label remapping, left/right leg split.
* :mod:`.sampling` - patch grid and random, foreground-aware patch batches.
* :mod:`.augmentation` - random geometric and intensity transforms (explicit Generators).
* :mod:`.losses` - the QMRITools loss family (squared Dice, Jaccard, Tversky, CE, Focal, MSD).
* :mod:`.schedule` - the warm-up / plateau / cosine learning-rate multiplier.
* :mod:`.metrics` - Dice and surface distances with the QMRITools definitions.
* :mod:`.train` - the segmentation training loop with checkpoints and resume.
* :mod:`.classifier` - training of the side/position slice classifier.
* :mod:`.evaluate` - sliding-window prediction and per-label evaluation.
* :mod:`.cli` - the ``legseg-train`` command.

Array layout everywhere: QMRITools ``(z, y, x)`` with column 0 = the patient's right
(``docs/architecture.md``); spacing ``(dz, dy, dx)`` in mm.
"""
