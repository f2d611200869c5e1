"""SegmentData orchestration with fake networks, on asymmetric phantoms stored in several
orientations. Left/right checks are made in world (RAS) coordinates: tissue at world x > 0 is
the patient's right and must carry even (Right) labels."""
import json

import nibabel as nib
import numpy as np
import pytest

from legseg_tf import nifti_io
from legseg_tf.config import InferenceConfig
from legseg_tf.labels import BY_INDEX, TRAIN_TABLES, train_label_map
from legseg_tf.segmenter import (
    NoModelError,
    QMRIToolsSegmenter,
    RegionNetwork,
    load_segmenter,
    required_roles,
    sideless_classes,
)
from legseg_tf.side import SideUndeterminedError, midline_column
from tests.helpers import install_tiny_models, save_as

VASTUS_LATERALIS = 12  # class of N5_UpperLeg
SOLEUS = 3             # class of N6_LowerLeg


def fake_network(role, table, train_class):
    """A 'network' labelling every tissue voxel of its part with one training class."""
    calls = []

    def predict(part):
        calls.append(part.shape)
        return np.where(part > 0, train_class, 0).astype(np.int32)

    network = RegionNetwork(role, f"fake-{role}", "0" * 64, table, predict)
    return network, calls


def fake_classifier(side="Both", lower_fraction=0.4):
    def classify(images):
        n = images.shape[0]
        n_lower = int(n * lower_fraction)
        positions = ["Lower"] * n_lower + ["Knee"] * 6 + ["Upper"] * (n - n_lower - 6)
        return [side] * n, positions
    return classify


def world_phantom(right_radius=9, left_radius=6, right=True, left=True, shape=(64, 40, 30)):
    """Canonical RAS (x, y, z) volume and affine; world x = 2 * i - 63 (x = 0 at i = 31.5).

    The patient's right leg (world x > 0, high index) is the bigger one.
    """
    rng = np.random.default_rng(0)
    x, y, _ = np.indices(shape)
    volume = rng.normal(1.0, 0.2, size=shape).clip(0).astype(np.float32)
    if right:
        volume[(x - 46) ** 2 + (y - 20) ** 2 <= right_radius**2] = 100.0
    if left:
        volume[(x - 17) ** 2 + (y - 20) ** 2 <= left_radius**2] = 100.0
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    affine[:3, 3] = (-63.0, -39.0, -70.0)
    return volume, affine


def world_x(geometry, shape_ras):
    i = np.arange(shape_ras[0])
    return geometry.ras_affine[0, 0] * i + geometry.ras_affine[0, 3]


def run_on_file(segmenter, path):
    volume_ras, geometry = nifti_io.load_canonical(path)
    volume = nifti_io.ras_to_qmri(volume_ras)
    result = segmenter.segment(volume, nifti_io.qmri_spacing(geometry),
                               midline_column=midline_column(geometry.ras_affine,
                                                             volume_ras.shape))
    return nifti_io.qmri_to_ras(result.labels), volume_ras, geometry, result


def upper_segmenter(classifier=None):
    network, calls = fake_network("upper_leg", "N5_UpperLeg", VASTUS_LATERALIS)
    return QMRIToolsSegmenter("upper", {"upper_leg": network}, classifier), calls


VL_R = int(train_label_map("N5_UpperLeg", "R")[VASTUS_LATERALIS])
VL_L = int(train_label_map("N5_UpperLeg", "L")[VASTUS_LATERALIS])


def test_label_constants_are_sided():
    assert BY_INDEX[VL_R].side == "R" and BY_INDEX[VL_L].side == "L"


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "S"), ("L", "A", "S"),
                                     ("A", "L", "S"), ("P", "R", "I")])
def test_right_leg_gets_right_labels_in_every_storage_orientation(tmp_path, axcodes):
    volume, affine = world_phantom()
    path = save_as(volume, affine, axcodes, tmp_path / "legs.nii.gz")
    segmenter, calls = upper_segmenter()
    labels_ras, volume_ras, geometry, result = run_on_file(segmenter, path)
    wx = world_x(geometry, volume_ras.shape)[:, None, None]
    tissue = volume_ras > 50
    right_tissue, left_tissue = labels_ras[tissue & (wx > 0)], labels_ras[tissue & (wx < 0)]
    # (the smoothed body mask trims a few edge voxels at the first and last slice)
    assert set(np.unique(right_tissue)) == {0, VL_R} and (right_tissue == VL_R).mean() > 0.95
    assert set(np.unique(left_tissue)) == {0, VL_L} and (left_tissue == VL_L).mean() > 0.95
    assert not np.any((labels_ras == VL_L) & (wx > 0))
    assert not np.any((labels_ras == VL_R) & (wx < 0))
    assert result.report.side.decision == "Both"
    assert len(calls) == 2
    # the bigger (right) leg has more voxels labelled Right
    assert (labels_ras == VL_R).sum() > (labels_ras == VL_L).sum()


def test_mirrored_header_mirrors_the_labels(tmp_path):
    """Same voxel array, x axis declared the other way round: the anatomy is mirrored, so the
    big leg is now the patient's LEFT and must be labelled Left."""
    volume, affine = world_phantom()
    mirrored = affine.copy()
    mirrored[0, 0] = -2.0
    mirrored[0, 3] = 63.0
    path = tmp_path / "mirrored.nii.gz"
    nib.save(nib.Nifti1Image(volume, mirrored), str(path))
    segmenter, _ = upper_segmenter()
    labels_ras, volume_ras, geometry, _ = run_on_file(segmenter, path)
    assert (labels_ras == VL_L).sum() > (labels_ras == VL_R).sum()
    wx = world_x(geometry, volume_ras.shape)[:, None, None]
    assert not np.any((labels_ras == VL_L) & (wx > 0))


@pytest.mark.parametrize("classifier_side", ["Left", "Right", "Both", None])
def test_single_right_leg_is_never_named_left(tmp_path, classifier_side):
    volume, affine = world_phantom(left=False)
    path = save_as(volume, affine, ("L", "P", "S"), tmp_path / "right.nii.gz")
    classifier = None if classifier_side is None else fake_classifier(classifier_side)
    segmenter, calls = upper_segmenter(classifier)
    labels_ras, volume_ras, _, result = run_on_file(segmenter, path)
    assert set(np.unique(labels_ras)) == {0, VL_R}
    assert result.report.side.decision == "Right"
    assert len(calls) == 1
    warned = any("Right" in w or "one" in w for w in result.report.warnings)
    assert warned == (classifier_side in ("Left", "Both"))


def test_single_left_leg_off_centre_uses_world_midline(tmp_path):
    # the left leg lies near the image centre column, but entirely at world x < 0
    volume, affine = world_phantom(right=False, left_radius=8)
    affine[0, 3] = -40.0  # world x = 2 i - 40 -> leg (i = 17) at x = -6, midline at i = 20
    path = save_as(volume, affine, ("R", "A", "S"), tmp_path / "left.nii.gz")
    segmenter, _ = upper_segmenter(fake_classifier("Left"))
    labels_ras, *_ , result = run_on_file(segmenter, path)
    assert set(np.unique(labels_ras)) == {0, VL_L}
    assert not result.report.warnings


def test_legs_region_uses_classifier_ranges_and_both_networks():
    volume, _ = world_phantom(shape=(64, 40, 40))
    qmri = nifti_io.ras_to_qmri(volume)
    upper, upper_calls = fake_network("upper_leg", "N5_UpperLeg", VASTUS_LATERALIS)
    lower, lower_calls = fake_network("lower_leg", "N6_LowerLeg", SOLEUS)
    segmenter = QMRIToolsSegmenter(
        "legs", {"upper_leg": upper, "lower_leg": lower}, fake_classifier("Both"),
        classifier_model={"id": "fake-classifier", "role": "classifier", "sha256": "1" * 64},
    )
    result = segmenter.segment(qmri, (5.0, 2.0, 2.0))
    ranges = result.report.region_ranges
    assert ranges["LowerLegs"][0] == 0 and ranges["UpperLegs"][1] == 39
    assert ranges["UpperLegs"][0] <= ranges["LowerLegs"][1]  # knee slices go to both
    assert len(upper_calls) == 2 and len(lower_calls) == 2
    sol_r = int(train_label_map("N6_LowerLeg", "R")[SOLEUS])
    sol_l = int(train_label_map("N6_LowerLeg", "L")[SOLEUS])
    found = set(np.unique(result.labels)) - {0}
    assert found == {sol_r, sol_l, VL_R, VL_L}
    # lower-leg labels (lower numbers) win the shared knee slices
    knee = slice(ranges["UpperLegs"][0], ranges["LowerLegs"][1] + 1)
    assert set(np.unique(result.labels[knee])) <= {0, sol_r, sol_l}
    # column 0 side of the QMRITools layout is the patient's right
    assert (result.labels[:, :, :32] == sol_r).any()
    assert not (result.labels[:, :, :20] == sol_l).any()
    assert [m["role"] for m in result.models] == ["classifier", "lower_leg", "upper_leg"]
    report = result.report.to_dict()
    # the sidecar's legseg.report keys, in the order earlier sidecars have them
    assert list(report) == ["method", "region", "spacing_zyx_mm", "mask", "anatomy", "positions",
                            "region_ranges", "side", "split", "parts", "timings_s", "warnings"]
    assert list(report["side"]) == ["decision", "source", "classifier", "geometry", "midline"]
    assert list(report["split"]) == ["cut_column", "method", "overlap", "part_labels",
                                     "parts_columns"]
    assert [list(part) for part in report["parts"]] == [
        ["region", "side", "model", "box_zyx", "labels", "confidence"]] * len(report["parts"])
    assert set(report["timings_s"]) == {"mask", "classify", "split", "networks", "merge"}
    assert len(report["positions"]["raw_positions"]) == len(report["positions"]["slices"])
    json.dumps(report)  # serialisable


def test_empty_volume_gives_empty_labels_with_warning():
    segmenter, calls = upper_segmenter()
    result = segmenter.segment(np.zeros((4, 10, 10), np.float32), (5.0, 1.0, 1.0))
    assert not result.labels.any() and result.labels.dtype == np.uint16
    assert calls == [] and result.report.warnings


def test_invalid_inputs_and_missing_networks():
    segmenter, _ = upper_segmenter()
    with pytest.raises(ValueError):
        segmenter.segment(np.zeros((4, 4)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        segmenter.segment(np.zeros((4, 4, 4)), (1.0, 0.0, 1.0))
    network, _ = fake_network("upper_leg", "N5_UpperLeg", 1)
    with pytest.raises(NoModelError, match="classifier"):
        QMRIToolsSegmenter("legs", {"upper_leg": network, "lower_leg": network})
    with pytest.raises(NoModelError, match="lower_leg"):
        QMRIToolsSegmenter("lower", {"upper_leg": network})


def test_network_returning_wrong_shape_is_an_error():
    bad = RegionNetwork("upper_leg", "bad", "0" * 64, "N5_UpperLeg",
                        lambda part: np.zeros((1, 1, 1), np.int32))
    segmenter = QMRIToolsSegmenter("upper", {"upper_leg": bad})
    volume, _ = world_phantom()
    with pytest.raises(RuntimeError, match="shape"):
        segmenter.segment(nifti_io.ras_to_qmri(volume), (5.0, 2.0, 2.0))


def test_required_roles():
    assert required_roles("legs") == ["lower_leg", "upper_leg", "classifier"]
    assert required_roles("upper") == ["upper_leg"]
    assert required_roles("legs-hip", with_classifier=False) == ["lower_leg", "upper_leg", "hip"]
    with pytest.raises(ValueError):
        required_roles("arm")


def write_manifest(models_dir, roles):
    models_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for role in roles:
        (models_dir / f"{role}.json").write_text("{}")
        (models_dir / f"{role}.weights.h5").write_bytes(b"x")
        entries.append({
            "id": f"m-{role}", "role": role, "config": f"{role}.json",
            "weights": f"{role}.weights.h5", "sha256": "a" * 64,
            "label_table": {"upper_leg": "N5_UpperLeg", "lower_leg": "N6_LowerLeg",
                            "hip": "N4_Hip"}.get(role),
            "provenance": {"source": "legseg-train"},
        })
    (models_dir / "manifest.json").write_text(
        json.dumps({"schema_version": 1, "models": entries}))


def test_load_segmenter_names_missing_roles(tmp_path):
    with pytest.raises(NoModelError, match="manifest"):
        load_segmenter(InferenceConfig(region="legs"), tmp_path / "none")
    write_manifest(tmp_path / "models", ["upper_leg"])
    with pytest.raises(NoModelError) as error:
        load_segmenter(InferenceConfig(region="legs"), tmp_path / "models")
    assert "lower_leg" in str(error.value) and "classifier" in str(error.value)
    assert "legseg-import" in str(error.value)
    with pytest.raises(NoModelError, match="hip"):
        load_segmenter(InferenceConfig(region="hip"), tmp_path / "models")


def big_right_small_left(shape=(10, 60, 100)):
    """QMRITools layout: big right leg (columns 20-60) near a small left leg (66-78)."""
    _, y, x = np.indices(shape)
    volume = np.zeros(shape, dtype=np.float32)
    volume[(x - 40) ** 2 + (y - 30) ** 2 <= 20**2] = 100.0
    volume[(x - 72) ** 2 + (y - 30) ** 2 <= 6**2] = 100.0
    return volume


@pytest.mark.parametrize("network_keeps_largest", [False, True])
def test_other_legs_muscle_in_the_overlap_is_never_named_for_this_side(network_keeps_largest):
    """The Left part reaches 10 % of the width into the big right leg; that slab is larger
    than the whole small left leg, so plain largest-component selection would call it Left."""
    from legseg_tf.postprocessing import largest_component_per_label

    volume = big_right_small_left()

    def predict(part):
        labels = np.where(part > 0, VASTUS_LATERALIS, 0).astype(np.int32)
        return largest_component_per_label(labels) if network_keeps_largest else labels

    network = RegionNetwork("upper_leg", "fake", "0" * 64, "N5_UpperLeg", predict)
    result = QMRIToolsSegmenter("upper", {"upper_leg": network}).segment(volume, (5.0, 1, 1))
    cut = result.report.split.cut_column
    assert 61 <= cut <= 66 and result.report.side.decision == "Both"
    labels = result.labels
    assert not (labels[:, :, :cut] == VL_L).any()
    assert not (labels[:, :, cut:] == VL_R).any()
    assert (labels == VL_R).sum() >= 0.95 * (volume[:, :, :cut] > 0).sum()
    left_leg = volume[:, :, cut:] > 0
    if network_keeps_largest:
        # the part's only VL component was the other leg's slab: dropped, not mislabelled
        assert not (labels == VL_L).any()
    else:
        assert (labels[:, :, cut:][left_leg] == VL_L).mean() > 0.9


def test_a_muscle_straddling_the_cut_is_clipped_to_its_own_side():
    """A network that labels its whole part, background included, makes one component
    reaching across the cut into the other leg; that reach must not carry this part's side."""
    volume = big_right_small_left()

    def predict(part):
        return np.full(part.shape, VASTUS_LATERALIS, dtype=np.int32)

    network = RegionNetwork("upper_leg", "fake", "0" * 64, "N5_UpperLeg", predict)
    result = QMRIToolsSegmenter("upper", {"upper_leg": network}).segment(volume, (5.0, 1, 1))
    cut = result.report.split.cut_column
    labels = result.labels
    assert (labels == VL_L).any() and (labels == VL_R).any()
    assert not (labels[:, :, :cut] == VL_L).any()
    assert not (labels[:, :, cut:] == VL_R).any()


def test_load_segmenter_runs_installed_models_end_to_end(tmp_path):
    """Installed Keras networks whose last layers always give one class (not what random
    weights happen to predict): every slice "Knee" and "Both", every voxel vastus lateralis
    (upper leg) or soleus (lower leg). Knee slices go to both networks; the lower leg wins."""
    install_tiny_models(tmp_path / "models", always={
        "upper_leg": VASTUS_LATERALIS, "lower_leg": SOLEUS, "side": "Both", "position": "Knee"})
    volume, _ = world_phantom(shape=(64, 32, 16))
    qmri = nifti_io.ras_to_qmri(volume)
    tissue = qmri > 50
    sol_r = int(train_label_map("N6_LowerLeg", "R")[SOLEUS])
    sol_l = int(train_label_map("N6_LowerLeg", "L")[SOLEUS])
    legs = load_segmenter(InferenceConfig(region="legs", device="cpu", save_probabilities=True),
                          tmp_path / "models")
    result = legs.segment(qmri, (5.0, 2.0, 2.0))
    report = result.report
    assert set(report.positions["raw_positions"]) == {"Knee"}
    assert report.side.decision == "Both" and report.side.classifier == "Both"
    assert [m["id"] for m in result.models] == ["tiny-classifier", "tiny-lower_leg",
                                                 "tiny-upper_leg"]
    cut = report.split.cut_column
    right, left = tissue.copy(), tissue.copy()
    right[:, :, cut:] = False
    left[:, :, :cut] = False
    assert set(np.unique(result.labels)) == {0, sol_r, sol_l}
    assert (result.labels[right] == sol_r).mean() > 0.95
    assert (result.labels[left] == sol_l).mean() > 0.95
    assert not (result.labels[:, :, :cut] == sol_l).any()
    assert not (result.labels[:, :, cut:] == sol_r).any()
    # "upper": the whole volume goes to the upper-leg network, the classifier votes the side
    segmenter = QMRIToolsSegmenter("upper", {"upper_leg": legs.networks["upper_leg"]},
                                   legs.classifier, legs.classifier_model,
                                   save_probabilities=True)
    result = segmenter.segment(qmri, (5.0, 2.0, 2.0))
    assert result.labels.shape == qmri.shape and result.labels.dtype == np.uint16
    assert result.label_map == [VL_L, VL_R]
    assert result.probabilities.shape == qmri.shape + (2,)
    assert (result.labels[right] == VL_R).mean() > 0.95
    assert (result.labels[left] == VL_L).mean() > 0.95
    # softmax of a logit 10 above n - 1 zeros: e^10 / (e^10 + n - 1)
    n = len(TRAIN_TABLES["N5_UpperLeg"]) + 1
    expected = np.exp(10.0) / (np.exp(10.0) + n - 1)
    np.testing.assert_allclose(result.probabilities[..., 1][result.labels == VL_R], expected,
                               rtol=1e-4)
    assert [m["id"] for m in result.models] == ["tiny-classifier", "tiny-upper_leg"]
    assert result.report.parts and result.report.timings_s["networks"] > 0
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    digests = {m["id"]: m["sha256"] for m in manifest["models"]}
    assert all(m["sha256"] == digests[m["id"]] for m in result.models)


def test_sideless_classes():
    from legseg_tf.labels import TRAIN_TABLES

    sacrum = TRAIN_TABLES["N4_Hip"].index("Sacrum") + 1
    fat = TRAIN_TABLES["N5_UpperLeg"].index("Subcutanious fat") + 1
    assert sideless_classes("N4_Hip") == {sacrum}
    assert sideless_classes("N5_UpperLeg") == {fat}


def test_single_leg_at_the_isocentre_takes_the_classifier_side(tmp_path):
    # one leg centred on world x = 0 (placed at the scanner isocentre): geometry cannot tell
    volume, affine = world_phantom(right=False, left_radius=10)
    affine[0, 3] = -34.0  # world x = 2 i - 34: the leg centre (i = 17) at x = 0
    path = save_as(volume, affine, ("L", "P", "S"), tmp_path / "centred.nii.gz")
    segmenter, _ = upper_segmenter(fake_classifier("Left"))
    labels_ras, *_, result = run_on_file(segmenter, path)
    assert set(np.unique(labels_ras)) == {0, VL_L}
    assert result.report.side.source == "classifier"
    without, _ = upper_segmenter(None)
    with pytest.raises(SideUndeterminedError):
        run_on_file(without, path)


def test_network_stride_from_configs():
    from legseg_tf.model_adapters import network_stride as _network_stride
    from legseg_tf.networks.config import UNetConfig

    unet = UNetConfig(n_classes=3, features=(4, 8, 16),
                      downsample=((1, 2, 2), (2, 2, 2), (1, 1, 1)), dropout_rate=0.0)
    assert _network_stride(unet.to_dict()) == (2, 4, 4)
    assert _network_stride({"kind": "wlnet_graph", "total_stride": [1, 16, 16]}) == (1, 16, 16)
    with pytest.raises(NoModelError, match="total_stride"):
        _network_stride({"kind": "custom"})
    with pytest.raises(NoModelError, match="3-D"):
        _network_stride({"kind": "wlnet_graph", "total_stride": [16, 16]})


def test_keras_slice_classifier_maps_outputs_to_class_names():
    import keras

    from legseg_tf.model_adapters import KerasSliceClassifier

    inputs = keras.Input(shape=(8, 8, 1))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    # mean +1 -> side "Both", position "Upper"; mean -1 -> "Left", "Lower"
    side = keras.layers.Dense(3, kernel_initializer=keras.initializers.Constant([[-5, 0, 5]]),
                              bias_initializer="zeros", activation="softmax")(mean)
    position = keras.layers.Dense(
        8, kernel_initializer=keras.initializers.Constant([[-5, 0, 5, 0, 0, 0, 0, 0]]),
        bias_initializer="zeros", activation="softmax")(mean)
    model = keras.Model(inputs, {"side": side, "position": position})
    classifier = KerasSliceClassifier(model, ("Left", "Right", "Both"),
                                      ("Lower", "Knee", "Upper", "Hip", "Torso", "Shoulder",
                                       "Neck", "Head"), batch_size=2)
    assert classifier.image_size == (8, 8)
    images = np.stack([-np.ones((8, 8)), np.ones((8, 8)), np.ones((8, 8))]).astype(np.float32)
    sides, positions = classifier(images)
    assert sides == ["Left", "Both", "Both"] and positions == ["Lower", "Upper", "Upper"]
    with pytest.raises(ValueError):
        classifier(np.zeros((1, 4, 4), np.float32))


def test_probabilities_follow_the_final_labels_and_stay_on_their_side():
    from types import SimpleNamespace

    volume = big_right_small_left()
    n_classes = 22  # N5_UpperLeg + background

    def predict(part):
        labels = np.where(part > 0, VASTUS_LATERALIS, 0).astype(np.int32)
        probabilities = np.zeros(part.shape + (n_classes,), dtype=np.float32)
        probabilities[..., 0] = (part == 0)
        probabilities[..., VASTUS_LATERALIS] = 0.9 * (part > 0)
        return SimpleNamespace(labels=labels, probabilities=probabilities)

    network = RegionNetwork("upper_leg", "fake", "0" * 64, "N5_UpperLeg", predict)
    segmenter = QMRIToolsSegmenter("upper", {"upper_leg": network}, save_probabilities=True)
    result = segmenter.segment(volume, (5.0, 1.0, 1.0))
    assert result.label_map == [VL_L, VL_R]
    assert result.probabilities.shape == volume.shape + (2,)
    cut = result.report.split.cut_column
    left_p, right_p = result.probabilities[..., 0], result.probabilities[..., 1]
    assert not left_p[:, :, :cut].any() and not right_p[:, :, cut:].any()
    assert np.allclose(right_p[result.labels == VL_R], 0.9)
    assert np.allclose(left_p[result.labels == VL_L], 0.9)
    without = QMRIToolsSegmenter("upper", {"upper_leg": network}).segment(volume, (5.0, 1, 1))
    assert without.probabilities is None and without.label_map is None


def test_the_networks_run_without_the_masked_copy_or_the_parts_already_run(monkeypatch):
    """Memory: the full-size masked copy is freed once the parts are cut, and each part's crop
    once its network has run, so the memory budget sizes the next part's tiles without them."""
    import weakref

    from legseg_tf import segmenter as module

    masked_refs, part_refs = [], []
    real_apply, real_split = module.apply_mask, module.split_parts

    def recording_apply(volume, mask):
        masked = real_apply(volume, mask)
        masked_refs.append(weakref.ref(masked))
        return masked

    def recording_split(*args, **kwargs):
        parts = real_split(*args, **kwargs)
        part_refs.extend(weakref.ref(part.data) for part in parts)
        return parts

    monkeypatch.setattr(module, "apply_mask", recording_apply)
    monkeypatch.setattr(module, "split_parts", recording_split)
    alive = []

    def predict(part):
        alive.append((masked_refs[0]() is not None, [ref() is not None for ref in part_refs]))
        return np.where(part > 0, VASTUS_LATERALIS, 0).astype(np.int32)

    network = RegionNetwork("upper_leg", "fake", "0" * 64, "N5_UpperLeg", predict)
    result = QMRIToolsSegmenter("upper", {"upper_leg": network}).segment(
        big_right_small_left(), (5.0, 1, 1))
    assert result.report.side.decision == "Both" and len(result.report.parts) == 2
    assert alive == [(False, [True, True]), (False, [False, True])]
