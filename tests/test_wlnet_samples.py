"""Reader and translator on the public .wlnet samples in ../shared/wlnet-samples."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from legseg_tf.wlnet.reader import count_parameters, iter_layers, read_wlnet
from tests.wlnet_reference import random_inputs, run_net, to_keras_layout

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "wlnet-samples"
EXPECTED = SAMPLES / "expected.json"
NAMES = sorted(json.loads(EXPECTED.read_text())) if EXPECTED.is_file() else []

pytestmark = pytest.mark.skipif(not EXPECTED.is_file(),
                                reason=f"sample .wlnet files not found at {SAMPLES}")


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(EXPECTED.read_text())


@pytest.mark.parametrize("name", NAMES)
def test_arrays_match_expected_json(name, expected):
    wl = read_wlnet(SAMPLES / name)
    exp = expected[name]
    assert wl.version == exp["Version"]
    assert wl.unstable == exp["Unstable"]
    assert wl.net.type == exp["top_type"]
    types = {layer.type for layer in iter_layers(wl.net)} | {"Chain"}
    assert types == set(exp["layer_types"])
    assert list(wl.arrays) == list(exp["arrays"])
    for key, array in wl.arrays.items():
        ref = exp["arrays"][key]
        assert wl.array_datasets[key] == ref["dataset"]
        assert str(array.dtype) == ref["dtype"]
        assert list(array.shape) == ref["shape"]
        assert float(array.astype(np.float64).sum()) == pytest.approx(ref["sum"], rel=1e-9,
                                                                       abs=1e-9)
    assert count_parameters(wl) == sum(int(np.prod(v["shape"])) for v in exp["arrays"].values())


@pytest.mark.parametrize("name", NAMES)
def test_keras_translation_matches_numpy_reference(name):
    from legseg_tf.wlnet.translator import translate

    wl = read_wlnet(SAMPLES / name)
    model, config = translate(wl)
    rng = np.random.default_rng(20261124)
    inputs = random_inputs(wl.net, rng, batch=3)
    ref = run_net(wl.net, inputs)
    (port, x), = inputs.items()
    got = np.asarray(model.predict(to_keras_layout(x).astype(np.float32), verbose=0))
    (out_port, want), = ref.items()
    assert got.shape == want.shape
    diff = float(np.max(np.abs(got - want)))
    print(f"{name}: max abs diff {diff:.3g}")
    assert diff <= 1e-4
    assert config["kind"] == "wlnet_graph"
    json.dumps(config)  # serialisable
