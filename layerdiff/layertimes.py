"""Per-layer times on the report's rows: ONNX Runtime's per-kernel times (from the profiled session
of bench.time_model) attributed through the graph ONNX Runtime really ran (fused kernels keep their
first node's name; a node it rebuilt is named NAME_token_K; kernels it inserted, a layout reorder or a
duplicated DequantizeLinear, are named for the node they serve), and a TensorRT profile (trtexec --exportProfile) through the engine's layers."""

from __future__ import annotations

import re
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx

from layerdiff.backends.ortnames import NCHWC_SUFFIX, PRE_Q, TOKEN, UPCAST_PREFIX
from layerdiff.cost import LayerTimes
from layerdiff.errors import BadInput

# what ONNX Runtime's graph transformers add to the name of a node or tensor they make for one of the
# model's (backends/ortnames): "NAME_token_K" (the NHWC pass's QLinearConv "Conv@3_token_204", which
# writes a tensor renamed "Conv@3"), "TENSOR_nchwc" (the NCHWc pass, after the tensor a kernel writes),
# "InsertedPrecisionFreeCast_TENSOR" (the FP32 copy of an FP16 tensor that a CPU kernel without FP16
# computes: the FP16 model's Conv on this CPU), "TENSOR_pre_q" (QDQ propagation: the output of the node
# a QuantizeLinear moved up to)
_DECORATION = re.compile(rf"^(?:{UPCAST_PREFIX})+|(?:{TOKEN.pattern.rstrip('$')}|{NCHWC_SUFFIX}|{PRE_Q})+$")


# layout conversions ONNX Runtime's NCHWc pass inserts after a kernel, back to the model's layout
_LAYOUT_BACK = frozenset({"ReorderOutput"})


def _plain(name: str) -> str:
    """`name` without the decorations ONNX Runtime's graph transformers add."""
    while True:
        plain = _DECORATION.sub("", name)
        if plain == name:
            return name
        name = plain


def row_of_nodes(rows, model: onnx.ModelProto) -> dict[str, str]:
    """{node of `model`: the report row it belongs to}. A row's ONNX nodes are its own; a conversion
    row is named by its QuantizeLinear, and the DequantizeLinear reading it rounds with it; any other
    node (a weight's DequantizeLinear, a Cast an FP16 converter added) belongs to the nearest row it
    feeds, else to the nearest row feeding it."""
    owner: dict[str, str] = {}
    for row in rows:
        if row.kind == "constant":
            continue
        for n in row.onnx_nodes:
            owner.setdefault(n, row.name)
        if row.kind == "conversion":
            owner.setdefault(row.name, row.name)
    nodes = [n for n in model.graph.node if n.name]
    producer = {o: n.name for n in nodes for o in n.output}
    for n in nodes:  # the DequantizeLinear of a Q/DQ pair
        if n.name not in owner and n.op_type == "DequantizeLinear" and n.input:
            q = producer.get(n.input[0])
            if q in owner and q in {r.name for r in rows if r.kind == "conversion"}:
                owner[n.name] = owner[q]
    return _nearest(nodes, owner)


def _nearest(nodes: Sequence[onnx.NodeProto], owner: dict[str, str]) -> dict[str, str]:
    consumers: dict[str, list[str]] = {}
    producer: dict[str, str] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n.name)
        for t in n.output:
            producer[t] = n.name
    by_name = {n.name: n for n in nodes}
    steps = (lambda m: [c for t in m.output for c in consumers.get(t, ())],
             lambda m: [producer[t] for t in m.input if t in producer])
    out = dict(owner)
    for n in nodes:
        if n.name not in out:
            found = _walk(n, steps, owner, by_name)
            if found is not None:
                out[n.name] = found
    return out


def _walk(start, steps, owner: Mapping[str, str], by_name: Mapping[str, object]) -> str | None:
    """The owner of the nearest item from `start` (an ONNX node or an engine layer, by `.name`) that
    has one, breadth first along each of `steps` in turn (what it feeds, then what feeds it)."""
    for step in steps:
        seen, queue = {start.name}, deque(step(start))
        while queue:
            name = queue.popleft()
            if name in seen:
                continue
            seen.add(name)
            if name in owner:
                return owner[name]
            if name in by_name:
                queue.extend(step(by_name[name]))
    return None


def attribute(node_ms: Mapping[str, float], optimized: onnx.ModelProto | None, model: onnx.ModelProto,
              owner: Mapping[str, str]) -> tuple[dict[str, float], float]:
    """({row: ms}, ms no row could be named for) from per-node kernel times of the graph ONNX Runtime
    ran for `model`. A kernel is named for a node of `model` when it kept that node's name, when it was
    added for one ("X/duplicated"), or when it computes one of that node's output tensors, each name
    read without the decorations ONNX Runtime's transformers add (_plain); else it is attributed
    through the graph to the nearest row it feeds or reads. A kernel that fused several rows counts in the row it is named for."""
    produced = {t: n for n in model.graph.node for t in n.output}
    known = dict(owner)

    def head(node: onnx.NodeProto, op: str) -> str:
        """The node a fused kernel of type `op` that computes `node`'s output started from: back along
        first inputs (Conv <- BatchNormalization <- Relu) to a node of the kernel's own op type."""
        base = op.removeprefix("Fused").removeprefix("QLinear").removeprefix("Nhwc")
        at = node
        for _ in range(6):
            if at.op_type == base:
                return at.name
            if not at.input or at.input[0] not in produced:
                break
            at = produced[at.input[0]]
        return node.name

    graph_nodes = [n for n in optimized.graph.node if n.name] if optimized is not None else []
    for n in graph_nodes:
        if n.name in known or n.op_type in _LAYOUT_BACK:
            continue
        base = n.name.split("/", 1)[0]
        # the tensors it writes (a name made from a tensor's: "relu1_nchwc" writes what relu1 wrote, which
        # a Conv with BN and ReLU fused in computes from the Conv), then its name read as a node's
        tensors = list(dict.fromkeys([_plain(base)] + [t for o in n.output for t in (o, _plain(o))]))
        by = [base] + [head(produced[t], n.op_type) for t in tensors if t in produced] + [_plain(base)]
        row = next((owner[b] for b in by if b in owner), None)
        if row is not None:
            known[n.name] = row
    # a reorder back to the model's layout writes the tensor the kernel before it computed (relu1, after
    # a Conv with BN and ReLU fused in, "relu1_nchwc"): it serves that kernel, so it counts in its row
    written = {t: n.name for n in graph_nodes for t in n.output}
    for n in graph_nodes:
        if n.op_type in _LAYOUT_BACK and n.name not in known and n.input:
            row = known.get(written.get(n.input[0], ""))
            if row is not None:
                known[n.name] = row
    known = _nearest(graph_nodes, known) if graph_nodes else known
    times: dict[str, float] = {}
    lost = 0.0
    for name, ms in node_ms.items():
        row = known.get(name) or known.get(name.split("/", 1)[0])
        if row is None:
            lost += ms
        else:
            times[row] = times.get(row, 0.0) + ms
    return times, lost


def layer_times(node_ms: Mapping[str, float], optimized: onnx.ModelProto | None, rows, model: onnx.ModelProto,
                runs: int | None = None) -> tuple[dict[str, float], LayerTimes]:
    """({row: ms}, where they came from) for per-node kernel times of the graph ONNX Runtime ran for
    `model` (bench.Timing's node_ms and optimized)."""
    times, lost = attribute(node_ms, optimized, model, row_of_nodes(rows, model))
    total = sum(times.values()) + lost
    return times, LayerTimes(source="onnxruntime profiler", runs=runs, statistic="median", total_ms=total,
                             unattributed_ms=lost)


def node_times(node_ms: Mapping[str, float], optimized: onnx.ModelProto | None, model: onnx.ModelProto,
               names: Sequence[str]) -> dict[str, float]:
    """{node of the FP32 model: ms} for per-node kernel times of the graph ONNX Runtime ran for `model`
    (the FP32 model, or a candidate made from it that kept its node names): a node the candidate added
    (a Q/DQ pair, a Cast) counts in the nearest named node it feeds, else in the nearest feeding it."""
    keep = set(names)
    nodes = [n for n in model.graph.node if n.name]
    owner = _nearest(nodes, {n.name: n.name for n in nodes if n.name in keep})
    times, _ = attribute(node_ms, optimized, model, owner)
    return times


def with_times(layers, cand_times: Mapping[str, float], ref_times: Mapping[str, float], total: float | None = None):
    """The rows with `time_ms` (and its share of the candidate's `total`: by default the sum of
    `cand_times`; give it with the time no row was named for) and `ref_time_ms` set; rows no kernel
    time was attributed to keep None where nothing of theirs ran."""
    from dataclasses import replace

    total = sum(cand_times.values()) if total is None else total
    out = []
    for row in layers:
        t = cand_times.get(row.name)
        out.append(replace(row, time_ms=t if t is not None else row.time_ms,
                           time_share=(t / total if t is not None and total > 0 else row.time_share),
                           ref_time_ms=ref_times.get(row.name, row.ref_time_ms)))
    return tuple(out)


def profile_times(report, profile_path: str | Path, engine_info: str | Path | None):
    """`report` with each row's `time_ms` from a TensorRT profile (trtexec --exportProfile): profile
    layers are engine layers (checked against the engine's layer information), and a row holds the
    engine layers it was compared as (a fused group is one engine layer, one row)."""
    from dataclasses import replace

    from layerdiff.cost import Cost
    from layerdiff.engine_info import parse_engine_info
    from layerdiff.engine_info.profile import match_profile, read_trt_profile

    if engine_info is None:
        raise BadInput("--trt-profile needs the engine's layer information (--engine-info)")
    profile = read_trt_profile(profile_path)
    if isinstance(engine_info, str) and engine_info.lstrip().startswith(("{", "[")):
        with tempfile.TemporaryDirectory(prefix="layerdiff-") as tmp:  # a trt-* candidate's own, as text
            (Path(tmp) / "engine_info.json").write_text(engine_info)
            info = parse_engine_info(Path(tmp) / "engine_info.json")
    else:
        info = parse_engine_info(engine_info)
    per_layer = match_profile(profile, info)
    owner = engine_layer_rows(report.layers, info)
    times: dict[str, float] = {}
    lost = 0.0
    for name, ms in per_layer.items():
        row = owner.get(name)
        if row is None:
            lost += ms
        else:
            times[row] = times.get(row, 0.0) + ms
    total = sum(per_layer.values())
    lt = LayerTimes(source=f"trtexec profile {Path(profile_path).name}", runs=profile.runs,
                    statistic=profile.statistic, total_ms=total, unattributed_ms=lost)
    cost = report.cost or Cost()
    layers = with_times(report.layers, times, {}, total)
    return replace(report, layers=layers, cost=replace(cost, layer_times=lt))


def engine_layer_rows(rows, info) -> dict[str, str]:
    """{engine layer: the report row its time counts in}. A row's own engine layers are its; a layer no
    row was compared as (a reformat TensorRT inserted, a second layer built from one ONNX node) counts in
    the row of the layer it serves (`serves`), else of its ONNX nodes, else of the nearest layer reading
    its outputs, else of the nearest one writing its inputs."""
    owner: dict[str, str] = {}
    by_node: dict[str, str] = {}
    for row in rows:
        for e in row.engine_layers:
            owner.setdefault(e, row.name)
        if row.kind == "layer":
            for n in row.onnx_nodes:
                by_node.setdefault(n, row.name)
    layers = list(info.layers)
    readers: dict[str, list[str]] = {}
    writer: dict[str, str] = {}
    for lay in layers:
        for t in lay.inputs:
            readers.setdefault(t.name, []).append(lay.name)
        for t in lay.outputs:
            writer[t.name] = lay.name
    by_name = {lay.name: lay for lay in layers}
    direct = dict(owner)
    for lay in layers:
        if lay.name in direct:
            continue
        row = direct.get(lay.serves or "") or next((by_node[n] for n in lay.onnx_nodes if n in by_node), None)
        if row is not None:
            owner[lay.name] = row
    steps = (lambda m: [r for t in m.outputs for r in readers.get(t.name, ())],
             lambda m: [writer[t.name] for t in m.inputs if t.name in writer])
    for lay in layers:
        if lay.name not in owner:
            found = _walk(lay, steps, owner, by_name)
            if found is not None:
                owner[lay.name] = found
    return owner
