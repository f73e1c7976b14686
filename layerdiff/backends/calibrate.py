"""INT8 calibration: the range of every float activation of a model over calibration samples.

minmax      the smallest and largest value seen (ReduceMin/ReduceMax computed by ONNX Runtime beside the
            graph, so only two numbers per tensor are kept, whatever the memory budget)
entropy     onnxruntime.quantization's KL-divergence threshold with its defaults (128 histogram bins, 128
            quantized bins). Those defaults leave a single candidate threshold, the full range, so the
            ranges equal minmax's; TensorRT's own calibrator searches 2048 bins, which ONNX Runtime's
            implementation takes about a second per tensor to do
percentile  99.999% of |x| on a 2048-bin histogram (onnxruntime.quantization's default)
Both histograms are built and thresholded by onnxruntime.quantization's own HistogramCollector, fed all
samples of a tensor at once as its calibrators do.

Histograms need whole tensors: they are captured in chunks of tensors whose values over all samples fit
in the memory budget. The result is onnxruntime.quantization's TensorsData, ready for its quantizer.
Nothing is printed and no file is written.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from layerdiff.backends.ort import make_session
from layerdiff.errors import Cancelled, InputDataError
from layerdiff.files import write_atomic
from layerdiff.graph import LoadedModel
from layerdiff.inputs import Samples
from layerdiff.jsonread import CALIBRATION_METHODS as _METHOD_NAMES
from layerdiff.jsonread import ranges_problem, read_json
from layerdiff.progress import Progress
from layerdiff.rewrite import fixed_shape_types, with_nodes, with_outputs

CALIBRATION_METHODS = tuple(_METHOD_NAMES)  # ("minmax", "entropy", "percentile")


def activations(model: LoadedModel) -> list[str]:
    """Float32 tensors that are computed from the inputs (graph inputs and node outputs, not weights)."""
    names = [i.name for i in model.inputs] + [t for lay in model.layers if lay.name not in model.weight_layers
                                             for t in lay.outputs]
    return [t for t in names if model.tensor_types.get(t) == TensorProto.FLOAT]


def calibrate(model: LoadedModel, samples: Samples, method: str = "minmax", budget: int | None = None,
              cancel: threading.Event | None = None, progress: Progress | None = None):
    """onnxruntime.quantization TensorsData for every float activation of `model`."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    if method not in CALIBRATION_METHODS:
        raise InputDataError(f"unknown calibration method '{method}'; use one of {', '.join(CALIBRATION_METHODS)}")
    if len(samples) == 0:
        raise InputDataError("the calibration set is empty: give --calib samples")
    for i, feed in enumerate(samples.feeds):
        bad = next((k for k, v in feed.items() if v.dtype.kind == "f" and not np.isfinite(v).all()), None)
        if bad is not None:
            raise InputDataError(f"calibration sample {i} of {samples.source} holds NaN or Inf in input '{bad}': INT8 "
                                 "ranges need finite values; give other --calib (or --inputs) samples")
    names = activations(model)
    if method == "minmax":
        lo, hi = _min_max(model, names, samples, cancel, progress)
        ranges = {t: TensorData(lowest=lo[t], highest=hi[t]) for t in names}
        kind = CalibrationMethod.MinMax
    else:
        ranges = _histograms(model, names, samples, method, budget, cancel, progress)
        kind = CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.Percentile
    for t, r in ranges.items():
        if not all(np.isfinite(np.asarray(v, np.float64)).all() for v in r.range_value):
            raise InputDataError(f"tensor '{t}' reaches NaN or Inf on the calibration samples, so it has no INT8 "
                                 "range; check the model and the --calib samples, or pin its readers to fp32")
    return TensorsData(kind, ranges)


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("calibration cancelled")


def _min_max(model, names, samples, cancel, progress):
    nodes, outputs = [], []
    for k, t in enumerate(names):
        for op in ("ReduceMin", "ReduceMax"):
            out = f"layerdiff/{op}/{k}"
            nodes.append(helper.make_node(op, [t], [out], name=out, keepdims=1))
            outputs.append(out)
    blob = with_outputs(with_nodes(model.blob, nodes, []), outputs, present=set(model.outputs))
    sess = make_session(blob, None, "calibration model", level="disabled", derived_from=model.blob)
    lo: dict[str, np.float32] = {}
    hi: dict[str, np.float32] = {}
    for si, feed in enumerate(samples.feeds):
        _check(cancel)
        values = sess.run(outputs, feed, cancel)
        for k, t in enumerate(names):
            a, b = values[outputs[2 * k]].reshape(-1), values[outputs[2 * k + 1]].reshape(-1)
            if a.size:  # an empty tensor has no range
                lo[t] = a[0] if t not in lo else min(lo[t], a[0])
                hi[t] = b[0] if t not in hi else max(hi[t], b[0])
        if progress:
            progress("calibrating", si + 1, len(samples))
    for t in names:
        lo.setdefault(t, np.float32(0.0))
        hi.setdefault(t, np.float32(0.0))
    return lo, hi


def _histograms(model, names, samples, method, budget, cancel, progress):
    from onnxruntime.quantization.calibrate import HistogramCollector

    if method == "entropy":
        collector = HistogramCollector("entropy", False, 128, 128, 99.999, "same")
    else:
        collector = HistogramCollector("percentile", True, 2048, 128, 99.999, "same")
    chunks = _chunks(model, names, samples, budget)
    done = 0
    for chunk in chunks:
        sess = make_session(with_outputs(model.blob, chunk, model.tensor_types, set(model.outputs)), None,
                            "calibration model", low_memory=True, level="disabled", derived_from=model.blob)
        gathered: dict[str, list[np.ndarray]] = {t: [] for t in chunk}
        for feed in samples.feeds:
            _check(cancel)
            for t, v in sess.run(chunk, feed, cancel).items():
                gathered[t].append(v)
            done += 1
            if progress:
                progress("calibrating", done, len(chunks) * len(samples))
        # exactly what the collector's collect() does, without its print()
        if method == "entropy":
            collector.collect_value(gathered)
        else:
            collector.collect_absolute_value(gathered)
        del gathered
    if method == "entropy":
        return {t: _entropy(collector, h) for t, h in collector.histogram_dict.items()}
    return {t: _percentile(h, 99.999) for t, h in collector.histogram_dict.items()}


def _entropy(collector, histogram):
    from onnxruntime.quantization.calibrate import TensorData

    lowest, highest = collector.get_entropy_threshold(histogram, collector.num_quantized_bins)
    return TensorData(lowest=lowest, highest=highest, hist=histogram[0], bins=histogram[1])


def _percentile(histogram, percentile: float):
    """onnxruntime.quantization's symmetric percentile threshold (HistogramCollector.compute_percentile)."""
    from onnxruntime.quantization.calibrate import TensorData

    hist, edges, min_value, max_value = histogram[:4]
    cdf = np.cumsum(hist / hist.sum())
    right = np.array(edges[np.searchsorted(cdf, percentile / 100.0)], dtype=edges.dtype)
    lowest, highest = -right, right
    if lowest < min_value:
        lowest = min_value
    if highest > max_value:
        highest = max_value
    return TensorData(lowest=np.asarray(lowest, dtype=edges.dtype), highest=np.asarray(highest, dtype=edges.dtype),
                      hist=hist, bins=edges)


def _chunks(model: LoadedModel, names: list[str], samples: Samples, budget: int | None) -> list[list[str]]:
    if budget is None:
        return [names]
    sizes = fixed_shape_types(model, {k: v.shape for k, v in samples.feeds[0].items()})
    default = max((int(np.prod(s, dtype=np.int64)) * 4 for s in sizes.values()), default=4)
    chunks: list[list[str]] = [[]]
    used = 0
    for t in names:
        cost = (int(np.prod(sizes[t], dtype=np.int64)) * 4 if t in sizes else default) * len(samples)
        if chunks[-1] and used + cost > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(t)
        used += cost
    return chunks


def ranges_to_json(data) -> dict:
    """The ranges the quantizer uses (lowest, highest per tensor) as JSON numbers (float32 values, exact)."""
    return {"method": str(data.calibration_method).rsplit(".", 1)[-1],
            "tensors": {t: [float(td.range_value[0]), float(td.range_value[1])] for t, td in data.items()}}


def ranges_from_json(obj: dict, tensors: list[str] | None = None):
    """TensorsData of ranges as ranges_to_json writes them (a recipe's, a cache's). Ranges INT8 cannot
    use (not two finite float32 numbers, lowest <= highest; a method that is not ONNX Runtime's) and,
    given `tensors` (the model's float activations, `activations(model)`), ranges that leave one out
    are a ValueError saying which."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    problem = ranges_problem(obj)
    if problem is None and tensors is not None:
        lacking = [t for t in tensors if t not in obj["tensors"]]
        if lacking:
            problem = (f"they lack the range of {len(lacking)} of the model's {len(tensors)} float tensors "
                       f"({', '.join(repr(t) for t in lacking[:2])}{', ...' if len(lacking) > 2 else ''})")
    if problem is not None:
        raise ValueError(problem)
    method = getattr(CalibrationMethod, obj["method"])
    return TensorsData(method, {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                                for t, (lo, hi) in obj["tensors"].items()})


class RangesCache:
    """Calibration ranges kept on disk between runs (`--cache-dir`), one file per model, method and
    calibration sample set."""

    def __init__(self, cache_dir: Path | None, model_sha256: str, method: str, calib: Samples):
        self.path = None
        if cache_dir is not None:
            key = hashlib.sha256(f"{model_sha256}{method}{calib.digest()}".encode()).hexdigest()[:16]
            self.path = cache_dir / f"calibration-{key}.json"

    def load(self, tensors: list[str] | None = None):
        """The cached ranges, or None; given `tensors` (the model's float activations), a range for
        each. A damaged file is an InputDataError saying to delete it."""
        if self.path is None or not self.path.is_file():
            return None
        damaged = "calibration cache {path} is damaged ({reason}); delete it"
        obj = read_json(self.path, "calibration cache", InputDataError, not_json=damaged, damaged=damaged)
        try:
            return ranges_from_json(obj, tensors)
        except ValueError as err:
            raise InputDataError(damaged.format(path=self.path, reason=err)) from None

    def save(self, ranges) -> None:
        if self.path is not None and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(ranges_to_json(ranges)).encode())
