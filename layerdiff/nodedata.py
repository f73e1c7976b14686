"""A report's error per ONNX node as Google Model Explorer node data (`layerdiff export REPORT.json
--format model-explorer`): open the FP32 model in Model Explorer (with the ONNX adapter,
`model-explorer-onnx`), load the file as node data, and the graph is coloured by where the error
enters (`local`) or how much of it has arrived (`accumulated`).

The file is the JSON that `model_explorer.node_data_builder.ModelNodeData.save_to_file` writes (the
tests rebuild it with those classes): `{graph id: {"results": {node id: {"value": v}}, "thresholds":
[...], ...}}`. The value is 1 - cosine (worst sample), so more is worse. Ids are the ONNX adapter's:
the graph's name, and each node's name after onnx_ir's NameFixPass (an unnamed node becomes `node`,
`node_1`, ...; a repeated name gets `_1`, `_2`, ... in file order), which `adapter_node_ids` mirrors.
A fused row gives its value to each of its nodes; conversion rows (the candidate's Q/DQ and Casts)
have no node in the FP32 model and are left out, as are rows with no value.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

from layerdiff.errors import BadInput
from layerdiff.report import Report

# (upper bound of 1 - cosine, colour): the first bound a node's value does not exceed gives its colour
THRESHOLDS = ((1e-4, "#a5d6a7"), (1e-3, "#fff59d"), (1e-2, "#ffcc80"), (2.0, "#ef9a9a"))
_FLAGS = {"hideInAggregatedStatsTable": False, "hideInChildrenStatsTable": False,
          "showExpandedSummaryOnGroupNode": False, "showLabelCountColumnsInChildrenStatsTable": False}


def adapter_node_ids(graph: onnx.GraphProto) -> list[str]:
    """The Model Explorer node id of each node of `graph`, in file order (onnx_ir's NameFixPass as the
    ONNX adapter runs it)."""
    used: set[str] = set()
    ids = []
    for node in graph.node:
        base = node.name or "node"
        name, k = base, 1
        while name in used:
            name = f"{base}_{k}"
            k += 1
        used.add(name)
        ids.append(name)
    return ids


def node_data(report: Report, model: onnx.ModelProto, metric: str = "local") -> dict[str, Any]:
    """The node data object of `report` for `model` (the report's FP32 model: its layer names are the
    report's, so unnamed nodes are found by their first output)."""
    from layerdiff.topology import (
        topological_layers,  # the names compare gave the model's nodes
    )

    if metric not in ("local", "accumulated"):
        raise BadInput(f"--metric is local or accumulated, not {metric}")
    graph = model.graph
    layers = topological_layers(graph, frozenset(i.name for i in graph.initializer))
    layer_of_output = {lay.outputs[0]: lay.name for lay in layers if lay.outputs}
    ids = adapter_node_ids(graph)
    node_id = {}
    for node, nid in zip(graph.node, ids, strict=True):
        outs = [o for o in node.output if o]
        if outs and outs[0] in layer_of_output:
            node_id[layer_of_output[outs[0]]] = nid
    results: dict[str, dict[str, float]] = {}
    for row in report.layers:
        if row.kind != "layer":
            continue
        cos = row.local_cosine if metric == "local" else row.cosine
        if cos is None:
            continue
        for name in row.onnx_nodes:
            if name in node_id:
                results[node_id[name]] = {"value": max(0.0, 1.0 - cos)}
    if not results:
        raise BadInput(f"the report has no {metric} error of any node of this model: nothing to show")
    return {graph.name if graph.name is not None else "<main>": {
        "results": results, "name": f"layerdiff {metric} error (1 - cosine)",
        "thresholds": [{"value": v, "bgColor": c} for v, c in THRESHOLDS], "gradient": [], **_FLAGS}}


def node_data_json(report: Report, model: onnx.ModelProto, metric: str = "local") -> str:
    return json.dumps(node_data(report, model, metric), indent=1) + "\n"
