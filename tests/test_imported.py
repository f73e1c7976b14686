"""Import of runs saved elsewhere: `polygraphy run ... --save-outputs` results, optionally grouped by the
engine's layer information. The results here are written by the real `polygraphy` tool (ONNX Runtime
runner on an FP16 candidate, since TensorRT cannot run here); what differs on a GPU is only which
runner produced them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.utils import Extractor

import layerdiff
from layerdiff import compare
from layerdiff.metrics import diff_metrics
from tests.conftest import FIXTURES, run_plain

POLYGRAPHY = str(Path(sys.executable).parent / "polygraphy")
CNN = FIXTURES / "cnn.onnx"


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """An FP16 candidate of the CNN, run by `polygraphy run` with every tensor marked, two samples."""
    from polygraphy.json import save_json

    tmp = tmp_path_factory.mktemp("polygraphy")
    cand = tmp / "cand.onnx"
    session = layerdiff.prepare(CNN, inputs=FIXTURES / "cnn_inputs")
    onnx.save(session.candidate("ort-fp16").executed, cand)  # the emulation model: FP16 rounding on this CPU
    feeds = []
    for f in sorted((FIXTURES / "cnn_inputs").glob("*.npz"))[:2]:
        with np.load(f) as d:
            feeds.append({"input": d["input"]})
    save_json(feeds, str(tmp / "inputs.json"))
    for out in ("outputs.json", "outputs_dir"):
        subprocess.run([POLYGRAPHY, "run", str(cand), "--onnxrt", "--onnx-outputs", "mark", "all", "--load-inputs",
                        str(tmp / "inputs.json"), "--save-outputs", str(tmp / out)], check=True, capture_output=True)
    return tmp, cand, feeds


def _tensor(report, name):
    return next(o for lay in report.layers for o in lay.outputs if o.tensor == name)


def test_imported_results_match_running_the_candidate_here(saved_run):
    tmp, cand, _ = saved_run
    imported = compare(CNN, f"polygraphy:{tmp / 'outputs.json'}", inputs=tmp / "inputs.json")
    direct = compare(CNN, str(cand), inputs=tmp / "inputs.json", capture_mode="mark-outputs")
    assert imported.capture.mode == "imported" and imported.candidate.kind == "polygraphy-results"
    for name in ("conv1_out", "relu2", "residual", "logits"):
        a, b = _tensor(imported, name), _tensor(direct, name)
        assert a.accumulated.worst.cosine == pytest.approx(b.accumulated.worst.cosine, abs=1e-9)
        assert a.accumulated.worst.max_abs == pytest.approx(b.accumulated.worst.max_abs, rel=1e-6, abs=1e-9)
        if name != "conv1_out":  # saved results do not hold the FP16 cast of the input that conv1 really reads
            assert a.local.worst.max_abs == pytest.approx(b.local.worst.max_abs, rel=1e-5, abs=1e-7)
    assert imported.output_metrics("probs").cosine == pytest.approx(direct.output_metrics("probs").cosine, abs=1e-9)
    assert {lay.precision for lay in imported.layers} == {"unknown"}  # no engine info given


def test_per_iteration_directory_form(saved_run):
    tmp, _, _ = saved_run
    assert sorted(p.suffix for p in (tmp / "outputs_dir").iterdir()) == [".json", ".json"]
    a = compare(CNN, f"polygraphy:{tmp / 'outputs.json'}", inputs=tmp / "inputs.json")
    b = compare(CNN, f"polygraphy:{tmp / 'outputs_dir'}", inputs=tmp / "inputs.json")
    assert a.output_metrics("probs") == b.output_metrics("probs")


def _engine_info(path):
    """Layer information in TensorRT's detailed JSON shape for a CNN engine that fused Conv+BN+ReLU and
    Conv+BN+Add (made by hand for the fixture model: no TensorRT here)."""
    def layer(name, nodes, ins, outs, fmt="Row major linear FP16 format", weights="Half"):
        d = {"Name": name, "LayerType": "CaskConvolution",
             "Inputs": [{"Name": t, "Dimensions": [], "Format/Datatype": fmt} for t in ins],
             "Outputs": [{"Name": t, "Dimensions": [], "Format/Datatype": fmt} for t in outs],
             "Metadata": "\x1e".join(f"[ONNX Layer: {n}]" for n in nodes)}
        if weights:
            d["Weights"] = {"Type": weights, "Count": 1}
        return d
    layers = [
        layer("conv1 + conv1_bn + relu1", ["conv1", "conv1_bn", "relu1"], ["input"], ["relu1"]),
        layer("conv2 + conv2_bn + relu2", ["conv2", "conv2_bn", "relu2"], ["relu1"], ["relu2"]),
        layer("conv3 + conv3_bn + residual_add + relu3", ["conv3", "conv3_bn", "residual_add", "relu3"],
              ["relu2", "relu1"], ["relu3"]),
        layer("maxpool", ["maxpool"], ["relu3"], ["pool"], weights=None),
        layer("conv4 + conv4_bn + relu4", ["conv4", "conv4_bn", "relu4"], ["pool"], ["relu4"]),
        layer("{ForeignNode[gap...softmax]}", ["gap", "flatten", "fc", "softmax"], ["relu4"], ["probs"],
              fmt="Row major linear FP32", weights=None),
    ]
    path.write_text(json.dumps({"Layers": layers, "Bindings": ["input", "probs"]}))
    return path


@pytest.fixture(scope="module")
def engine_run(saved_run):
    """The same results, reduced to the tensors such an engine has (fused intermediates do not exist)."""
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult

    tmp, _, _ = saved_run
    keep = {"relu1", "relu2", "relu3", "pool", "relu4", "probs"}
    results = RunResults.load(str(tmp / "outputs.json"))
    reduced = RunResults()
    for runner, iterations in results.items():
        reduced.append((runner, [IterationResult({k: v for k, v in it.items() if k in keep}, runner_name=runner)
                                 for it in iterations]))
    reduced.save(str(tmp / "engine_outputs.json"))
    return tmp / "engine_outputs.json", _engine_info(tmp / "layers.json")


def test_fused_groups_are_one_row_with_their_onnx_nodes(saved_run, engine_run):
    tmp, _, _ = saved_run
    results, layers = engine_run
    report = compare(CNN, f"polygraphy:{results}", inputs=tmp / "inputs.json", engine_info=layers)
    rows = {lay.engine_layers[0]: lay for lay in report.layers}
    assert len(report.layers) == 6 and report.counts.layers == 18 and report.counts.rows == 6
    row = rows["conv3 + conv3_bn + residual_add + relu3"]
    assert row.name == "conv3"  # rows are named by their first ONNX node, which is the same in every run
    assert row.onnx_nodes == ("conv3", "conv3_bn", "residual_add", "relu3") and row.precision == "fp16"
    assert [o.tensor for o in row.outputs if o.paired] == ["relu3"]
    assert all(o.unpaired_reason.startswith("fused inside") for o in row.outputs if not o.paired)
    assert rows["{ForeignNode[gap...softmax]}"].precision == "fp32"
    assert report.counts.fused_away == 18 - 6
    assert report.candidate.get("engine_info")["boundary_tensors"] == 7  # input, relu1-4, pool, probs
    assert report.candidate.get("engine_info")["boundary_tensors_captured"] == 6  # the graph input is not an output
    d = report.to_dict()
    assert d["layers"][2]["onnx_nodes"] == ["conv3", "conv3_bn", "residual_add", "relu3"]
    assert d["layers"][2]["realised_precision"] == "fp16" and d["capture"]["mode"] == "imported"


def test_local_error_of_a_fused_group_is_its_subgraph_on_the_candidates_boundary(saved_run, engine_run):
    """Group conv2+bn+relu recomputed in FP32 from the candidate's relu1, against the candidate's relu2;
    checked with onnx.utils' extractor and a plain ONNX Runtime run."""
    tmp, _, feeds = saved_run
    results, layers = engine_run
    report = compare(CNN, f"polygraphy:{results}", inputs=tmp / "inputs.json", engine_info=layers)
    row = next(lay for lay in report.layers if lay.engine_layers == ("conv2 + conv2_bn + relu2",))
    local = next(o for o in row.outputs if o.paired).local.worst
    sub = Extractor(onnx.shape_inference.infer_shapes(onnx.load(CNN))).extract_model(["relu1"], ["relu2"])
    from polygraphy.comparator import RunResults

    iterations = next(iter(RunResults.load(str(results)).values()))
    worst = 0.0
    for it in iterations:
        fp32 = run_plain(sub.SerializeToString(), {"relu1": it["relu1"].astype(np.float32)})["relu2"]
        worst = max(worst, diff_metrics(fp32, it["relu2"]).max_abs)
    assert local.max_abs == pytest.approx(worst, rel=1e-3)  # ONNX Runtime fuses the extracted subgraph its own way
    first = next(o for o in report.layer("conv1").outputs if o.paired)
    # its input is exact, so local = accumulated, up to FP32 rounding of differently fused reference runs
    assert first.local.worst.max_abs == pytest.approx(first.accumulated.worst.max_abs, rel=1e-3)


def test_real_cookbook_results_from_another_model_are_refused(shared_dir, cli, tmp_path):
    results = shared_dir / "fixtures" / "polygraphy_results" / "cookbook_runexample_trt861_output.json"
    code, _, err = cli("compare", CNN, "--candidate", f"polygraphy:{results}", "--inputs", FIXTURES / "cnn_inputs", "-q")
    assert code == 2
    assert err == (f"layerdiff: error: results file {results} holds none of the model's outputs ['probs']; it holds: "
                   "['A-V-12-Add', 'A-V-14-ArgMax']: were they saved from another model?\n")


def test_real_cookbook_results_load_with_polygraphys_loader(shared_dir):
    from layerdiff.backends.imported import load_polygraphy_results

    results = shared_dir / "fixtures" / "polygraphy_results" / "cookbook_runexample_trt861_output.json"
    iterations, runner = load_polygraphy_results(results, ("A-V-12-Add",), 1)
    assert runner.startswith("trt-runner") and len(iterations) == 1
    assert iterations[0]["A-V-12-Add"].shape == (4, 10)
    assert iterations[0]["A-V-14-ArgMax"].dtype == np.int32


def test_import_errors(saved_run, cli, tmp_path):
    tmp, _, _ = saved_run
    code, _, err = cli("compare", CNN, "--candidate", f"polygraphy:{tmp / 'outputs.json'}", "-q")
    assert (code, err) == (2, "layerdiff: error: importing Polygraphy results needs the inputs of that run: pass its "
                              "--save-inputs file with --inputs\n")
    code, _, err = cli("compare", CNN, "--candidate", f"polygraphy:{tmp / 'outputs.json'}", "--inputs",
                       FIXTURES / "cnn_inputs", "-q")
    assert (code, err) == (2, f"layerdiff: error: results file {tmp / 'outputs.json'} has 2 iteration(s) but --inputs "
                              "has 4 sample(s): give the --save-inputs file of the same polygraphy run\n")
    code, _, err = cli("compare", CNN, "--candidate", "ort-fp16", "--engine-info", tmp / "layers.json", "-q")
    assert (code, err) == (2, "layerdiff: error: --engine-info describes a TensorRT engine whose results are "
                              "imported: use it with --candidate polygraphy:RESULTS\n")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    code, _, err = cli("compare", CNN, "--candidate", f"polygraphy:{bad}", "--inputs", tmp / "inputs.json", "-q")
    assert code == 2 and err.startswith(f"layerdiff: error: {bad} is not a Polygraphy --save-outputs results file")


def test_save_candidate_is_for_onnx_runtime_candidates(saved_run, cli, tmp_path):
    tmp, _, _ = saved_run
    code, _, err = cli("compare", CNN, "--candidate", f"polygraphy:{tmp / 'outputs.json'}", "--inputs",
                       tmp / "inputs.json", "--save-candidate", tmp_path / "c.onnx", "-q")
    assert (code, err) == (2, "layerdiff: error: --save-candidate: imported results have no ONNX model to save\n")
    assert not (tmp_path / "c.onnx").exists()


def test_saved_inputs_that_do_not_fit_the_model(saved_run, cli, tmp_path):
    from polygraphy.json import save_json

    tmp, _, _ = saved_run
    bad = tmp_path / "inputs.json"
    save_json([{"input": np.zeros((1, 3, 28, 28), np.float32)}], str(bad))
    code, _, err = cli("compare", CNN, "--candidate", f"polygraphy:{tmp / 'outputs.json'}", "--inputs", bad, "-q")
    assert (code, err) == (2, "layerdiff: error: --inputs sample 0 (inputs.json): input 'input' has shape 1x3x28x28 "
                              "but the model expects 1x3x32x32\n")


def test_imported_report_round_trip(saved_run, engine_run, tmp_path):
    tmp, _, _ = saved_run
    results, layers = engine_run
    report = compare(CNN, f"polygraphy:{results}", inputs=tmp / "inputs.json", engine_info=layers)
    layerdiff.write_report(report, tmp_path / "r.json")
    assert layerdiff.load_report(tmp_path / "r.json") == report


def test_results_answer_only_for_their_own_inputs(saved_run):
    """A source of imported results finds the iteration by the feed's contents, and refuses another feed."""
    tmp, _, feeds = saved_run
    session = layerdiff.prepare(CNN, inputs=tmp / "inputs.json")
    cand = session.candidate(f"polygraphy:{tmp / 'outputs.json'}")
    with cand.open() as source:
        out = source.infer(feeds[1])
        assert set(out) == {"probs"}
        with pytest.raises(layerdiff.BadInput, match="not computed on this input"):
            source.infer({"input": feeds[0]["input"] + 1})


def test_the_tui_shows_the_engine_layers_of_a_fused_row(saved_run, engine_run, tmp_path):
    """A report with TensorRT fields (engine layers, fused groups) opens in the TUI; the detail pane of a
    fused row names its engine layer and ONNX nodes, and why its inner tensors are not compared."""
    import asyncio
    import io

    from rich.console import Console
    from textual.widgets import Static

    from layerdiff.report import load_report, write_report
    from layerdiff.tui.app import LayerdiffApp

    tmp, _, _ = saved_run
    results, layers = engine_run
    path = tmp_path / "engine.json"
    write_report(compare(CNN, f"polygraphy:{results}", inputs=tmp / "inputs.json", engine_info=layers), path)
    report = load_report(path)
    app = LayerdiffApp(report, path)

    async def go():
        async with app.run_test(size=(160, 50)) as pilot:
            app._select("conv3")
            await pilot.pause()
            console = Console(width=160, record=True, file=io.StringIO())
            console.print(app.query_one("#detail-body", Static).content)
            return console.export_text()

    text = asyncio.run(go())
    assert "engine layers" in text and "conv3 + conv3_bn + residual_add + relu3" in text
    assert "conv3, conv3_bn, residual_add, relu3" in text  # the ONNX nodes line
    assert "fused inside" in text


def test_a_trt_profile_gives_each_fused_row_its_engine_layers_time(saved_run, engine_run, tmp_path, cli):
    """trtexec --exportProfile's shape, for the hand-made engine of _engine_info (its layer names, times
    chosen here): each row's time_ms is its engine layer's medianMs, shares add up to 1."""
    tmp, _, _ = saved_run
    results, layers = engine_run
    names = [lay["Name"] for lay in json.loads(layers.read_text())["Layers"]]
    medians = {name: 0.1 * (i + 1) for i, name in enumerate(names)}
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps([{"count": 100}] + [
        {"name": n, "timeMs": 100 * m, "averageMs": m * 1.1, "medianMs": m, "percentage": 1.0}
        for n, m in medians.items()]))
    out = tmp_path / "r.json"
    code, stdout, err = cli("compare", CNN, "--candidate", f"polygraphy:{results}", "--inputs", tmp / "inputs.json",
                            "--engine-info", layers, "--trt-profile", profile, "-o", out)
    assert code == 0, err
    report = layerdiff.load_report(out)
    timed = {lay.engine_layers[0]: lay.time_ms for lay in report.layers if lay.time_ms is not None}
    assert timed == pytest.approx(medians)
    assert sum(lay.time_share for lay in report.layers if lay.time_share is not None) == pytest.approx(1.0)
    lt = report.cost.layer_times
    assert (lt.runs, lt.statistic, lt.unattributed_ms) == (100, "median", pytest.approx(0.0))
    assert "slowest rows (candidate kernel time; TensorRT profile, median of 100 runs)" in stdout
    # TensorRT 7's layout (no medianMs): the averages, said so
    profile.write_text(json.dumps([{"count": 100}] + [
        {"name": n, "timeMs": 100 * m, "averageMs": m * 1.1, "percentage": 1.0} for n, m in medians.items()]))
    code, stdout, err = cli("compare", CNN, "--candidate", f"polygraphy:{results}", "--inputs", tmp / "inputs.json",
                            "--engine-info", layers, "--trt-profile", profile, "-o", out)
    report = layerdiff.load_report(out)
    assert code == 0 and report.cost.layer_times.statistic == "average"
    assert "slowest rows (candidate kernel time; TensorRT profile, average of 100 runs)" in stdout
    assert {lay.engine_layers[0]: lay.time_ms for lay in report.layers if lay.time_ms} == pytest.approx(
        {n: m * 1.1 for n, m in medians.items()})


def test_a_reformat_layer_of_a_profile_counts_in_the_row_it_serves(saved_run, engine_run, tmp_path, cli):
    """TensorRT inserts reformat layers no ONNX node names ("Reformatting CopyNode for Input Tensor 0 to
    LAYER", 13 of the 36 layers of the real TREx resnet18 FP16 engine): their time is the layer's they
    serve, not lost; shares are of the whole profile."""
    tmp, _, _ = saved_run
    results, layers = engine_run
    info = json.loads(layers.read_text())
    conv2 = "conv2 + conv2_bn + relu2"
    reformat = f"Reformatting CopyNode for Input Tensor 0 to {conv2}"
    info["Layers"].insert(1, {"Name": reformat, "LayerType": "Reformat",
                              "Inputs": [{"Name": "relu1", "Dimensions": [], "Format/Datatype": "Row major linear FP16 format"}],
                              "Outputs": [{"Name": "relu1 copy", "Dimensions": [], "Format/Datatype": "Channel major FP16 format"}],
                              "Metadata": ""})
    with_reformat = tmp_path / "layers.json"
    with_reformat.write_text(json.dumps(info))
    times = {lay["Name"]: 0.1 * (i + 1) for i, lay in enumerate(info["Layers"])}
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps([{"count": 10}] + [
        {"name": n, "timeMs": 10 * m, "averageMs": m, "medianMs": m, "percentage": 1.0} for n, m in times.items()]))
    out = tmp_path / "r.json"
    code, _, err = cli("compare", CNN, "--candidate", f"polygraphy:{results}", "--inputs", tmp / "inputs.json",
                       "--engine-info", with_reformat, "--trt-profile", profile, "-o", out)
    assert code == 0, err
    report = layerdiff.load_report(out)
    row = next(lay for lay in report.layers if conv2 in lay.engine_layers)
    assert row.time_ms == pytest.approx(times[conv2] + times[reformat])
    lt = report.cost.layer_times
    assert lt.unattributed_ms == pytest.approx(0.0) and lt.total_ms == pytest.approx(sum(times.values()))
    assert row.time_share == pytest.approx(row.time_ms / lt.total_ms)


def test_a_profile_of_another_engine_is_refused(saved_run, engine_run, tmp_path, cli, shared_dir):
    tmp, _, _ = saved_run
    results, layers = engine_run
    other = shared_dir / "fixtures" / "trt_engine_info" / "trex_mobilenet_qat_int8_trt84.profile.json"
    out = tmp_path / "r.json"
    code, _, err = cli("compare", CNN, "--candidate", f"polygraphy:{results}", "--inputs", tmp / "inputs.json",
                       "--engine-info", layers, "--trt-profile", other, "-o", out)
    assert code == 2 and "none of its 73 layer names" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = cli("compare", CNN, "--candidate", f"polygraphy:{results}", "--inputs", tmp / "inputs.json",
                       "--trt-profile", other)
    assert code == 2 and "--engine-info" in err


def test_imported_results_without_engine_info_say_what_is_missing(saved_run, engine_run, cli):
    """A new user's Polygraphy import without --engine-info read '13 fused away inside kernels' and
    'unknown: ... folded into a constant by the runtime', words about ONNX Runtime: the results simply
    hold fewer tensors, and without the engine's layer information nothing says what ran a row."""
    tmp, _, _ = saved_run
    results, _ = engine_run
    code, stdout, err = cli("compare", CNN, "--candidate", f"polygraphy:{results}", "--inputs", tmp / "inputs.json",
                            "--top", "30")
    assert code == 0, err
    assert "not in the imported results (fused, or not saved)" in stdout and "inside kernels" not in stdout
    assert "folded into a constant by the runtime" not in stdout
    if "unknown" in stdout.split("worst", 1)[-1]:
        assert "unknown: no engine layer information to say what ran it (give --engine-info)" in stdout
