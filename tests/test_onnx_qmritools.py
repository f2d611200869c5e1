"""The QMRITools networks as ONNX files (both UNET generations, the classifier) translate to
Keras models that match ONNX Runtime to 1e-4, on random inputs and on real-MRI patches."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests import onnx_builder as B
from tests.conftest import shared_file

TOL = 1e-4

SMALL = {
    "B-batch-erf_div": (B.UNetSpec("B"), B.Export()),
    "B-instance-opset9-upsample": (B.UNetSpec("B", norm="instance"),
                                   B.Export(opset=9, resize="upsample", dropout="identity")),
    "A-batch-erf_mul-sum": (B.UNetSpec("A", downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2))),
                            B.Export(gelu="erf_mul", total="sum", batch=1)),
    "A-instance-gelu_node": (B.UNetSpec("A", norm="instance",
                                        downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2))),
                             B.Export(opset=20, gelu="node")),
}


def _unet(tmp_path, name, spec, export, **kw):
    return B.save(B.unet_model(spec, export, **kw), tmp_path / f"{name}.onnx")


@pytest.mark.parametrize("case", sorted(SMALL))
def test_small_unets_match_onnxruntime(tmp_path, case):
    spec, export = SMALL[case]
    path = _unet(tmp_path, case, spec, export)
    x = np.random.default_rng(3).standard_normal((1, 1, *spec.input_size)).astype(np.float32)
    diff, config = B.compare(path, {"Input": x}, free_spatial=True)
    assert diff <= TOL, f"{case}: {diff:.3g}"
    assert config["inputs"][0]["keras_shape"] == [None, None, None, 1]
    assert config["outputs"][0]["wolfram_shape"] == [*spec.input_size, spec.n_classes]
    # the free-spatial model takes other multiples of the total stride too
    model, _ = B.translate_file(path, free_spatial=True)
    bigger = (spec.input_size[0] * 2, spec.input_size[1], spec.input_size[2] * 2)
    y = model(np.zeros((1, *bigger, 1), np.float32), training=False)
    assert tuple(y.shape) == (1, *bigger, spec.n_classes)


@pytest.mark.parametrize("generation", ["A", "B"])
def test_documented_widths_match_onnxruntime(tmp_path, generation):
    """Features 32/64/128/192/320, 22 classes, the documented schedule (A: scale 1 first)."""
    spec = B.DOCUMENTED
    if generation == "A":
        spec = B.UNetSpec("A", n_classes=22, features=spec.features,
                          downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2)),
                          input_size=spec.input_size)
    path = _unet(tmp_path, generation, spec, B.Export())
    x = np.random.default_rng(4).standard_normal((1, 1, *spec.input_size)).astype(np.float32)
    diff, config = B.compare(path, {"Input": x}, free_spatial=True)
    assert diff <= TOL, f"{generation}: {diff:.3g}"
    model, _ = B.translate_file(path, free_spatial=True)
    n_conv = sum(op["op"] == "conv" for op in config["ops"])
    assert n_conv == 37 if generation == "B" else n_conv > 30
    from legseg_tf.model_adapters import graph_stride

    assert graph_stride(config) == ((4, 16, 16) if generation == "B" else (4, 16, 16))
    assert model.count_params() > 6_000_000


def test_classifier_128_matches_onnxruntime(tmp_path):
    for k, export in enumerate((B.Export(), B.Export(opset=11, linear="matmul",
                                                     flatten="reshape", batch=4))):
        path = B.save(B.classifier_model(B.ClassifierSpec(), export), tmp_path / f"c{k}.onnx")
        x = np.random.default_rng(5).random((4, 1, 128, 128)).astype(np.float32)
        diff, config = B.compare(path, {"Input": x})
        assert diff <= TOL
        assert [o["port"] for o in config["outputs"]] == ["Side", "Position"]
        assert [o["wolfram_shape"] for o in config["outputs"]] == [[3], [8]]


def _thigh() -> np.ndarray:
    """The real thigh (QMRITools test.nii.gz) as a (z, y, x) float32 array."""
    import nibabel as nib

    path = shared_file("data", "qmritools", "scripts_test_data", "test.nii.gz")
    volume = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)  # (x, y, z)
    return np.ascontiguousarray(np.transpose(volume, (2, 1, 0)))


def _real_patches(shape, n=2):
    """Patches of the real thigh, z-scored, (n, 1, z, y, x)."""
    volume = _thigh()
    volume = (volume - volume.mean()) / (volume.std() + 1e-6)
    out = []
    for k in range(n):
        z0 = k * (volume.shape[0] - shape[0]) // max(n - 1, 1)
        y0, x0 = volume.shape[1] // 2 - shape[1] // 2, volume.shape[2] // 3 + 40 * k
        out.append(volume[z0:z0 + shape[0], y0:y0 + shape[1], x0:x0 + shape[2]])
    patches = np.stack(out)[:, None]
    assert patches.std() > 0.1
    return patches.astype(np.float32)


@pytest.mark.realdata
def test_unets_match_onnxruntime_on_real_thigh_patches(tmp_path):
    for name, spec, export in (
            ("documented-B", B.DOCUMENTED, B.Export()),
            ("small-A", SMALL["A-batch-erf_mul-sum"][0], B.Export(gelu="erf_mul"))):
        size = (16, 64, 64) if name.startswith("documented") else (8, 32, 32)
        path = _unet(tmp_path, name, dataclasses.replace(spec, input_size=size), export)
        diff, _ = B.compare(path, {"Input": _real_patches(size)}, free_spatial=True)
        assert diff <= TOL, f"{name}: {diff:.3g}"


@pytest.mark.realdata
def test_classifier_matches_onnxruntime_on_real_slices(tmp_path):
    from legseg_tf.body_position import ClassifierConfig, classifier_images

    images = classifier_images(_thigh(), ClassifierConfig(image_size=(128, 128))).images
    assert images.shape[1:] == (128, 128) and images.shape[0] > 10
    path = B.save(B.classifier_model(), tmp_path / "Body_Pos_Side.onnx")
    diff, _ = B.compare(path, {"Input": images[:, None].astype(np.float32)})
    assert diff <= TOL
