"""prepare once, realise and evaluate many plans; safe in worker threads; cancellable."""

import logging
import sys
import threading

import numpy as np
import pytest

import layerdiff
from layerdiff import BackendError, BadInput, Cancelled, FakeBackend, PrecisionPlan
from tests.conftest import FIXTURES

CNN = FIXTURES / "cnn.onnx"


@pytest.fixture(scope="module")
def session():
    return layerdiff.prepare(CNN, inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")


def test_evaluate_gives_the_reports_final_outputs(session):
    cand = session.realise(PrecisionPlan.uniform("int8", pin_fp32={"conv3"}))
    evaluation = session.evaluate(cand)
    report = session.compare(cand)
    assert evaluation.outputs == report.outputs
    assert len(evaluation.per_sample) == 4 and evaluation.cosine == report.output_metrics("probs").cosine


def test_realising_a_plan_again_gives_an_equal_candidate_without_quantizing(session, monkeypatch):
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    plan = PrecisionPlan.uniform("int8", pin_fp32={"fc"})
    first = session.realise(plan)
    monkeypatch.setattr(QDQQuantizer, "quantize_model", lambda self: pytest.fail("quantized again"))
    second = session.realise(PrecisionPlan("int8", {"fc": "fp32", "conv1": "int8"}))  # the same plan, spelled out
    third = session.realise(PrecisionPlan.uniform("int8", pin_fp32={"fc", "conv4"}))
    assert first.key == second.key != third.key
    assert session.evaluate(first).outputs == session.evaluate(second).outputs


def test_two_evaluations_in_two_threads_equal_one_after_the_other(session):
    plans = [PrecisionPlan.uniform("int8"), PrecisionPlan.uniform("int8", pin_fp32={"conv1", "conv2"}),
             PrecisionPlan.uniform("fp16")]
    cands = [session.realise(p) for p in plans]
    sequential = [session.evaluate(c).outputs for c in cands]
    results: dict[int, object] = {}

    def work(i):
        results[i] = session.evaluate(cands[i % 3]).outputs

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(6)] == sequential * 2


def test_two_comparisons_in_two_threads_equal_one_after_the_other(session):
    cands = [session.realise(PrecisionPlan.uniform("int8")), session.realise(PrecisionPlan.uniform("fp16"))]
    sequential = [session.compare(c) for c in cands]
    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, session.compare(cands[i]))) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert results[i].layers == sequential[i].layers and results[i].outputs == sequential[i].outputs


def test_a_run_touches_no_process_wide_state(session):
    """Root logger level and handlers, sys.stdout, ONNX Runtime's default logger, the loaded model: the same
    before, during and after a run."""
    import onnxruntime

    root = logging.getLogger()
    level, handlers, stdout = root.level, list(root.handlers), sys.stdout
    before = session.model.proto.SerializeToString()
    seen = []

    def progress(what, done, total):
        seen.append((root.level == level, root.handlers == handlers, sys.stdout is stdout))

    original = onnxruntime.set_default_logger_severity
    onnxruntime.set_default_logger_severity = lambda *a: pytest.fail("the run changed ONNX Runtime's default logger")
    try:
        fresh = layerdiff.prepare(CNN, inputs=FIXTURES / "cnn_inputs", calibration="percentile")
        fresh.compare(fresh.realise(PrecisionPlan.uniform("int8")), progress=progress)
        fresh.compare(fresh.realise(PrecisionPlan.uniform("fp16")), progress=progress)
    finally:
        onnxruntime.set_default_logger_severity = original
    assert seen and all(all(s) for s in seen)
    assert (root.level, root.handlers, sys.stdout) == (level, handlers, stdout)
    assert session.model.proto.SerializeToString() == before


def test_first_use_from_many_threads_calibrates_and_quantizes_once(monkeypatch):
    """A fresh session asked for candidates and comparisons by four threads at once: one calibration,
    one quantization, one reference cache, and the results of a session used one call at a time."""
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    import layerdiff.backends.int8 as int8

    calls = {"calibrate": 0, "quantize": 0}
    real_calibrate, real_quantize = int8.calibrate, QDQQuantizer.quantize_model

    def counted_calibrate(*args, **kwargs):
        calls["calibrate"] += 1
        return real_calibrate(*args, **kwargs)

    def counted_quantize(self):
        calls["quantize"] += 1
        return real_quantize(self)

    monkeypatch.setattr(int8, "calibrate", counted_calibrate)
    monkeypatch.setattr(QDQQuantizer, "quantize_model", counted_quantize)
    plans = [PrecisionPlan.uniform("int8"), PrecisionPlan.uniform("int8", pin_fp32={"conv2"})]
    serial = layerdiff.prepare(CNN, inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    expected = [serial.compare(serial.realise(p)) for p in plans]
    calls.update(calibrate=0, quantize=0)
    fresh = layerdiff.prepare(CNN, inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(i):
        try:
            start.wait()
            results[i] = fresh.compare(fresh.realise(plans[i % 2]))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert calls == {"calibrate": 1, "quantize": 1}
    for i in range(4):
        assert results[i].layers == expected[i % 2].layers and results[i].outputs == expected[i % 2].outputs


def test_a_cancelled_calibration_keeps_nothing_and_runs_again():
    fresh = layerdiff.prepare(CNN, inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    stop = threading.Event()
    seen = []

    def progress(what, done, total):
        seen.append(what)
        stop.set()

    with pytest.raises(Cancelled):
        fresh.realise(PrecisionPlan.uniform("int8"), progress=progress, cancel=stop)
    assert seen and not fresh.quantizer.calibrated
    cand = fresh.realise(PrecisionPlan.uniform("int8"))
    assert fresh.quantizer.calibrated and cand.details["quantized_nodes"] > 0


def test_cancel_while_the_reference_cache_is_built():
    """The first comparison of a session builds the reference cache; a cancel then stops it, keeps no
    half cache, and the next comparison builds it whole."""
    fresh = layerdiff.prepare(CNN, inputs=FIXTURES / "cnn_inputs", reference_provider="cpu")
    cand = fresh.realise(PrecisionPlan.uniform("fp16"))
    stop = threading.Event()
    stop.set()
    report = fresh.compare(cand, cancel=stop)
    assert report.capture.interrupted and report.capture.samples_done == 0
    assert fresh._exposed is None
    whole = fresh.compare(cand)
    assert not whole.capture.interrupted and len(fresh._exposed) == len(fresh.samples)


def test_cancel_by_event(session):
    cand = session.realise(PrecisionPlan.uniform("int8"))
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        session.evaluate(cand, cancel=stop)
    stop = threading.Event()

    def progress(what, done, total):
        if done == 1:
            stop.set()

    report = session.compare(cand, progress=progress, cancel=stop)
    assert report.capture.interrupted and report.capture.samples_done == 1
    assert all(o.accumulated.samples == 1 for lay in report.layers for o in lay.outputs if o.paired)
    assert all(not o.paired for o in report.outputs)


@pytest.mark.parametrize("plan, backend, message", [
    (PrecisionPlan("int8", {"softmax": "fp16"}), "ort",
     "the ONNX Runtime backend realises INT8 or FP16 plans, not both in one model: pin the other nodes to fp32, or "
     "use a TensorRT backend"),
    (PrecisionPlan("bf16"), "ort", "ONNX Runtime's CPU provider cannot realise a BF16 plan (it has no BF16 kernels); "
                                   "use trt-bf16 on a machine with TensorRT, or an fp16 plan"),
    (PrecisionPlan.uniform("fp16", pin_fp32={"conv1"}), "ort-trt-fp16",
     "ort-trt-fp16 runs the whole model in fp16 (onnxruntime-gpu's providers take no per-node precisions); use "
     "ort-int8 / ort-fp16 on the CPU, or trt-* with TensorRT, to pin nodes"),
    (PrecisionPlan.uniform("int8"), "ort-cuda",
     "ort-cuda runs the whole model in fp32 (onnxruntime-gpu's providers take no per-node precisions); use "
     "ort-int8 / ort-fp16 on the CPU, or trt-* with TensorRT, to pin nodes"),
])
def test_a_backend_that_cannot_realise_a_plan_says_so(session, plan, backend, message):
    with pytest.raises(BackendError) as err:
        session.realise(plan, backend)
    assert str(err.value) == message


def test_a_spec_and_a_plan_that_disagree(session):
    """The report's finding: PrecisionPlan.uniform("fp16") with ort-int8 built an unquantized model still
    labelled as QDQ INT8."""
    with pytest.raises(BadInput) as err:
        session.candidate("ort-int8", PrecisionPlan.uniform("fp16"))
    assert str(err.value) == ("--candidate ort-int8 with a plan that has no int8 node; use a plan with default int8 "
                              "(nodes pinned to fp32 are fine)")


def test_fake_backend_injects_a_known_error_per_node(session):
    fake = FakeBackend(session.model, errors={"conv3": 0.05}, default_error=1e-3)
    report = session.compare(session.realise(PrecisionPlan.uniform("int8", pin_fp32={"conv2"}), backend=fake))
    rows = {lay.name: lay for lay in report.layers}
    assert layerdiff.rank_layers(report)[0].name == "conv3"
    # y * (1 + e sin(997 y)): a relative error of e times the RMS of the sine, about e / sqrt(2)
    assert rows["conv3"].local_rel_rms == pytest.approx(0.05 / np.sqrt(2), rel=0.1)
    assert rows["relu1"].local_rel_rms == pytest.approx(1e-3 / np.sqrt(2), rel=0.2)
    assert rows["conv2"].local_rel_rms < 1e-6 and rows["conv2"].precision == "fp32"  # pinned: FP32 rounding only
    assert rows["conv3"].precision == "int8" and rows["conv3"].kernels == ("fake",)
    assert report.capture.exposed_vs_plain_max_abs == 0.0
    again = session.compare(session.realise(PrecisionPlan.uniform("int8", pin_fp32={"conv2"}), backend=fake))
    assert again.layers == report.layers  # deterministic


def test_a_plan_naming_nodes_the_model_lacks(session):
    with pytest.raises(layerdiff.PlanError) as err:
        session.realise(PrecisionPlan.uniform("int8", pin_fp32={"conv9", "conv2"}))
    assert str(err.value) == ("the plan names 1 node(s) the model does not have: conv9; node names are those in the "
                              "report's 'name' field")
    with pytest.raises(layerdiff.PlanError) as err:  # a conversion row shows a tensor's name: which node writes it
        session.realise(PrecisionPlan.uniform("int8", pin_fp32={"conv1_out"}))
    assert str(err.value) == ("the plan names 1 node(s) the model does not have: conv1_out; 'conv1_out' is a tensor, "
                              "written by node 'conv1': pin the node")


def test_tensorrt_provider_rows_say_unknown_precision(session):
    """The report's finding: ort-trt-fp16 read its labels from the FP32 graph, so every row said fp32 while
    TensorRT ran FP16. ONNX Runtime's TensorRT provider builds its own engines; the label is unknown."""
    from layerdiff.backends.ort_backend import OrtRunner

    runner = OrtRunner(session.model.proto, None, "all", "mark-outputs", expect_provider="TensorrtExecutionProvider")
    kernel = runner.deployment().kernel("conv1_out")
    assert (kernel.op, kernel.precision) == ("TensorrtExecutionProvider", "unknown")
    cpu = OrtRunner(session.model.proto, None, "all", "mark-outputs").deployment().kernel("conv1_out")
    assert (cpu.op, cpu.precision) == ("Conv", "fp32")


def test_every_source_is_a_candidate_source(session):
    """ONNX Runtime, imported and TensorRT sources all answer the one protocol (no hasattr dispatch)."""
    from layerdiff import CandidateSource
    from layerdiff.backends.imported import ImportedSource
    from layerdiff.backends.trt import TrtSource

    cand = session.realise(PrecisionPlan.uniform("int8"))
    sources = [cand.open(), cand.deployment().open(["conv1_out"]), ImportedSource({}, None, "imported"),
               TrtSource(engine=None, names=None, provider="TensorRT")]
    assert all(isinstance(s, CandidateSource) for s in sources)
    with cand.open() as plain, cand.deployment().open(["conv1_out"]) as exposed:
        feed = session.samples.feeds[0]
        assert set(plain.infer(feed)) == {"probs"} and set(exposed.infer(feed)) == {"conv1_out"}
        assert plain.provider == exposed.provider == "CPUExecutionProvider"


@pytest.mark.parametrize("spec", list(__import__("layerdiff.specs", fromlist=["SPECS"]).SPECS))
def test_every_spec_is_built_or_refused_in_one_line(session, spec):
    """Each spec of the table is a candidate here (CPU ones) or a BadInput/BackendError saying what to do
    (GPU ones), and the CLI help names it."""
    from click.testing import CliRunner

    from layerdiff.cli import cli
    from layerdiff.specs import SPECS

    try:
        cand = session.candidate(spec)
    except layerdiff.LayerdiffError as err:
        assert SPECS[spec].where.endswith("GPU") and "\n" not in str(err) and "GPU" in str(err)
    else:
        assert cand.kind in (spec, "fake") and cand.plan.default == SPECS[spec].precision
    help_text = " ".join(CliRunner().invoke(cli, ["compare", "--help"]).output.split())
    assert spec in help_text.replace("- ", "-")


def test_api_arguments_of_the_wrong_kind_are_layerdiff_errors():
    """The trial's findings: raw TypeErrors and AttributeErrors from the API, and a --shape string read
    character by character."""
    import onnx

    with pytest.raises(BadInput, match="inputs is a path"):
        layerdiff.prepare(CNN, inputs=123)
    with pytest.raises(BadInput, match="model is the path of an ONNX file or an onnx.ModelProto"):
        layerdiff.prepare(3)
    with pytest.raises(BadInput, match="a candidate is named by a string"):
        layerdiff.compare(CNN, None)
    with pytest.raises(BadInput, match="divergence_cosine is a cosine"):
        layerdiff.compare(CNN, "fake", divergence_cosine=2)
    from_proto = layerdiff.prepare(onnx.load(CNN), shapes="input:1x3x32x32", reference_provider="cpu")
    from_file = layerdiff.prepare(CNN, reference_provider="cpu")
    assert from_proto.samples.feeds[0]["input"].shape == (1, 3, 32, 32)
    assert from_proto.evaluate(from_proto.candidate("ort-fp16")).outputs == \
        from_file.evaluate(from_file.candidate("ort-fp16")).outputs
    with pytest.raises(BadInput, match="made from another model"):
        from_file.evaluate(layerdiff.prepare(FIXTURES / "transformer.onnx").candidate("fake"))
    with pytest.raises(layerdiff.PlanError, match="FakeBackend errors name node"):
        FakeBackend(from_file.model, errors={"nope": 0.05})
    with pytest.raises(layerdiff.PlanError, match="finite numbers >= 0"):
        FakeBackend(from_file.model, errors={"conv1": -0.1})
