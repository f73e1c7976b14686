"""The check behind every "no value of it exists". Before a report says that the deployed graph holds no
value of a candidate tensor, that tensor is computed by the candidate itself (its own graph, optimizations
off) and compared with every value of the optimized graph ONNX Runtime runs, on up to two samples: float
values as they are, INT8 ones dequantized with the scale and zero point their kernel writes them with,
each in every arrangement of its axes that gives the tensor's shape. A value equal to the tensor within
rounding almost everywhere (see RELATIVE, FAR, FEW) on every sample checked disproves the claim: ONNX Runtime rewrote the graph in a way the
structural pairing (ortaliases, ortlayout) does not follow (it fuses Slices into a Split and moves the
Transposes around it, say), and the tensor is read from that value, arranged back, from then on. The
check shares none of the pairing's rules: it is an oracle beside it, and its pairings are reported as
made by value."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from layerdiff.backends.ort import OrtSource
from layerdiff.backends.ortops import FLOATS, LOW
from layerdiff.rewrite import with_outputs

# a deployed value holds the tensor where it equals it almost everywhere and is close everywhere: FP32
# kernels differ from the candidate's own graph by their summation order (far below 1e-3 of the range),
# FP16 ones by the rounding their other fusions upstream changed (0.5% seen on PP-OCRv4's recogniser),
# INT8 ones by a step; and an integer kernel upstream rounding one element a step the other way changes
# a few elements downstream by more (x**3 after a QLinearConv: 1.7% of the range on Magika)
RELATIVE = {np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-3, np.dtype(np.float16): 2e-2}
RELATIVE_OTHER = 5e-2  # bfloat16 and what else numpy reads as float
FAR = 5e-2  # of the range: no element further than this
FEW = 0.01  # at most this share of the elements further than the rounding above
STEPS = 1.01  # INT8 steps of rounding a deployed INT8 value may differ by
MAX_RANK_PERMUTED = 5  # 120 arrangements at most per value
SAMPLES = 2


@dataclass(frozen=True)
class Holder:
    """A value of the optimized graph that holds a candidate tensor: `ktensor` (dequantized with `params`
    where INT8), its axes of size above 1 (`core`) arranged by `perm`, reshaped to the tensor's `shape`."""

    ktensor: str
    params: tuple[str, str] | None
    core: tuple[int, ...]
    perm: tuple[int, ...]
    shape: tuple[int, ...]
    error: float

    def nodes(self, side: str) -> tuple[onnx.NodeProto, ...]:
        """The nodes beside the graph that give the tensor, the last writing `side`."""
        held = side + "/held"
        first = helper.make_node("DequantizeLinear", [self.ktensor, *self.params], [held], name=held) \
            if self.params else helper.make_node("Identity", [self.ktensor], [held], name=held)
        out = [first]
        for step, value in (("/core", self.core), ("/shape", self.shape)):
            out.append(helper.make_node("Constant", [], [side + step + "_dims"], name=side + step + "_dims",
                                        value=numpy_helper.from_array(np.array(value, np.int64))))
        out.append(helper.make_node("Reshape", [held, side + "/core_dims"], [side + "/core"], name=side + "/core"))
        arranged = side + "/core"
        if self.perm != tuple(range(len(self.perm))):  # (a value of one number has no axes to arrange)
            arranged = side + "/arranged"
            out.append(helper.make_node("Transpose", [side + "/core"], [arranged], name=arranged, perm=list(self.perm)))
        out.append(helper.make_node("Reshape", [arranged, side + "/shape_dims"], [side], name=side))
        return tuple(out)


def holders(kernels, tensors: list[str], feeds: list[dict[str, np.ndarray]],
            first: dict[str, np.ndarray] | None = None) -> dict[str, Holder]:
    """{tensor of `tensors` (each said to have no value in the deployed graph): the optimized graph's value
    that holds it on every one of `feeds` (up to SAMPLES of them with the first one's input shapes)}.
    `first`: the candidate's own values on feeds[0], where the caller has them (own_values)."""
    if not tensors or not feeds:
        return {}
    shapes = {k: v.shape for k, v in feeds[0].items()}
    feeds = [f for f in feeds if {k: v.shape for k, v in f.items()} == shapes][:SAMPLES]
    found: dict[str, list[tuple[Holder, ...]]] = {t: [] for t in tensors}
    qparams = _candidate_qparams(kernels, tensors)
    for k, feed in enumerate(feeds):
        wanted = first if k == 0 and first is not None else own_values(kernels, tensors, feed)
        deployed = _deployed_values(kernels, feed, {v.size for v in wanted.values()})
        for t in tensors:
            value = wanted.get(t)
            if value is None or not np.issubdtype(value.dtype, np.floating) or value.size == 0:
                found[t].append(())
                continue
            # an INT8 value is compared with the tensor rounded and clipped as it writes it only where the
            # candidate itself rounds the tensor so (else a Relu's clipping would pass for its input)
            own_q = qparams.get(t, set())
            found[t].append(tuple(h for name, (w, step, params, clip) in deployed.items()
                                  for h in _matches(name, value, w, step, params,
                                                    clip if clip and (step, clip[0]) in own_q else None)))
    out: dict[str, Holder] = {}
    for t, per_feed in found.items():
        if not per_feed or not per_feed[0]:
            continue
        # holds on every sample: the same value in the same arrangement
        keep = [h for h in per_feed[0] if all(any((g.ktensor, g.perm) == (h.ktensor, h.perm) for g in later)
                                                 for later in per_feed[1:])]
        if keep:  # exact values before rounded ones, then the closest
            out[t] = min(keep, key=lambda h: (h.params is not None, h.error))
    return out


def _candidate_qparams(kernels, tensors: list[str]) -> dict[str, set[tuple[float, float]]]:
    """{tensor: the (scale, zero point) of each QuantizeLinear of the candidate that reads it}."""
    inits = kernels.cinits
    out: dict[str, set[tuple[float, float]]] = {}
    wanted = set(tensors)
    for node in kernels.cproducer.values():
        if node.op_type != "QuantizeLinear" or not node.input or node.input[0] not in wanted or len(node.input) < 3:
            continue
        params = [numpy_helper.to_array(inits[n]) if n in inits else None for n in node.input[1:3]]
        if all(p is not None and p.size == 1 for p in params):
            out.setdefault(node.input[0], set()).add((float(params[0].reshape(-1)[0]), float(params[1].reshape(-1)[0])))
    return out


def own_values(kernels, tensors: list[str], feed) -> dict[str, np.ndarray]:
    """The candidate's own values of `tensors` on `feed`: its graph as written, optimizations off."""
    source = OrtSource(with_outputs(kernels.cblob, list(tensors), present=set(kernels.coutputs)),
                       {t: t for t in tensors}, kernels.providers, "disabled", "candidate",
                       derived_from=kernels.cblob)
    with source:
        return source.infer(feed)


def _deployed_values(kernels, feed, sizes: set[int]) -> dict[str, tuple]:
    """{value of the optimized graph: (its numbers as floats, the INT8 rounding step or None, its scale
    and zero point or None, (zero point, lowest, highest) of its type or None)}, for every float value and every INT8 value whose scale is known and one
    number, whose size may be one of `sizes`; never the weights."""
    info = kernels._kinfo
    low = set(LOW)

    def may_fit(name: str) -> bool:
        ktype, shape = info.get(name, (None, None))
        if ktype not in FLOATS and ktype not in low:
            return False
        if shape is None or not all(isinstance(d, int) for d in shape):
            return True
        return int(np.prod(shape, dtype=np.int64)) in sizes

    names = [o for n in kernels.graph.node for o in n.output if o and may_fit(o)]
    run = OrtSource(with_outputs(kernels.blob, names, present={o.name for o in kernels.graph.output}),
                    {n: n for n in names}, kernels.providers, "disabled", "candidate", derived_from=kernels.blob)
    with run:
        values = run.infer(feed)
    inits = {i.name: i for i in kernels.graph.initializer}
    out: dict[str, tuple] = {}
    for name in names:
        v = values.get(name)
        if v is None or v.size not in sizes:
            continue
        if np.issubdtype(v.dtype, np.floating):
            out[name] = (v.astype(np.float64), None, None, None)
            continue
        params = kernels._qparams(kernels.kproducer[name]) if name in kernels.kproducer else None
        if params is None or any(p not in inits for p in params):
            continue
        scale, zero = (numpy_helper.to_array(inits[p]) for p in params)
        if scale.size != 1 or zero.size != 1:
            continue  # per channel: the axis is the kernel's, not followed here
        s = float(scale.reshape(-1)[0])
        out[name] = ((v.astype(np.float64) - float(zero.reshape(-1)[0])) * s, s, tuple(params),
                     (float(zero.reshape(-1)[0]), np.iinfo(v.dtype).min, np.iinfo(v.dtype).max))
    return out


def rounded(v: np.ndarray, step: float, clip: tuple[float, int, int]) -> np.ndarray:
    """`v` as an integer kernel writes it: rounded to `step` and clipped to its type's range (a uint8
    output with zero point 0 is a Relu)."""
    zero, lo, hi = clip
    return (np.clip(np.round(v.astype(np.float64) / step) + zero, lo, hi) - zero) * step


def _matches(name: str, value: np.ndarray, w: np.ndarray, step: float | None, params, clip=None) -> list[Holder]:
    """`w` (INT8 values dequantized: `step`, `params`, `clip`) in each arrangement that holds `value`."""
    if w.size != value.size:
        return []
    v = value.astype(np.float64) if clip is None or not step else rounded(value, step, clip)
    span = max(float(np.max(np.abs(v))), 1e-30) if v.size else 1.0
    near = RELATIVE.get(value.dtype, RELATIVE_OTHER) * span + (STEPS * step if step else 0.0)
    far = max(FAR * span, 5 * near)
    core = tuple(d for d in w.shape if d != 1)
    want = tuple(d for d in v.shape if d != 1)
    squeezed = w.reshape(core)
    if len(core) != len(want) or len(core) > MAX_RANK_PERMUTED:
        return []
    out = []
    for perm in permutations(range(len(core))):
        arranged = squeezed.transpose(perm)
        if arranged.shape != want:
            continue
        diff = np.abs(arranged.reshape(v.shape) - v)
        err = float(np.max(diff)) if v.size else 0.0
        if err <= far and (err <= near or float(np.mean(diff > near)) <= FEW):
            out.append(Holder(name, params, core, perm, tuple(v.shape), err))
    return out


def misread(kernels, tensors: list[str], feed: dict[str, np.ndarray],
            own: dict[str, np.ndarray] | None = None) -> list[str]:
    """Of `tensors` (each read by structure through a permutation back to the model's layout), those whose
    value as read is not the candidate's own on `feed`: a layout the structure followed wrongly (a square
    value transposed passes every shape check)."""
    if not tensors:
        return []
    wanted = own if own is not None else own_values(kernels, tensors, feed)
    with kernels.open(tensors) as source:
        read = source.infer(feed)
    inits = {i.name: i for i in kernels.graph.initializer}
    wrong = []
    for t in tensors:
        v, r = wanted.get(t), read.get(t)
        if v is None or r is None or not np.issubdtype(v.dtype, np.floating) or v.size == 0:
            continue
        dq = kernels.aliases[t][1][0]
        step = None
        if dq.op_type == "DequantizeLinear":  # read as an integer kernel writes it: the tensor rounded
            params = [numpy_helper.to_array(inits[n]) if n in inits else None for n in dq.input[1:3]]
            if len(params) != 2 or any(p is None or p.size != 1 for p in params):
                continue  # per channel: not checked here
            scale, zero = params
            step = float(scale.reshape(-1)[0])
            info = np.iinfo(zero.dtype)
            v = rounded(v, step, (float(zero.reshape(-1)[0]), info.min, info.max)).astype(v.dtype)
        identity = tuple(range(len([d for d in r.shape if d != 1])))
        if r.shape != v.shape or not any(h.perm == identity for h in _matches(t, v, r.astype(np.float64), step, None)):
            wrong.append(t)
    return wrong
