import onnx
import pytest

from tests.conftest import FIXTURES, load_script, run_plain

make_fixtures = load_script("make_fixtures")
MODELS = make_fixtures.build_all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_committed_fixture_matches_script(name):
    assert onnx.load(FIXTURES / name) == MODELS[name], f"fixtures/{name} is stale: run scripts/make_fixtures.py"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fixture_is_small_pinned_and_runs(name):
    path = FIXTURES / name
    assert path.stat().st_size < 1_000_000
    model = onnx.load(path)
    assert model.ir_version == make_fixtures.IR_VERSION <= 13
    assert [o.version for o in model.opset_import] == [make_fixtures.OPSET]


def test_cnn_inputs_match_script():
    import numpy as np

    for name, arr in make_fixtures.make_cnn_inputs().items():
        with np.load(FIXTURES / "cnn_inputs" / f"{name}.npz") as f:
            assert np.array_equal(f["input"], arr)


def test_fp16_overflow_fixture_really_overflows_fp16():
    import numpy as np

    x = np.random.default_rng(0).random((1, 64), dtype=np.float64).astype(np.float32)
    out = run_plain(FIXTURES / "fp16_overflow.onnx", {"x": x})
    assert np.isfinite(out["out"]).all()
    w = onnx.numpy_helper.to_array(next(t for t in onnx.load(FIXTURES / "fp16_overflow.onnx").graph.initializer
                                        if t.name == "big_w"))
    assert np.abs(x @ w).max() > 65504
