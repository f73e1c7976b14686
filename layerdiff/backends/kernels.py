"""What ONNX Runtime really runs for a candidate model, and how to read its tensors without changing it.

Marking a tensor as a graph output stops ONNX Runtime from fusing across it, so a session with every
tensor exposed is not the session a user deploys (on a real INT8 detector it ran no QLinearConv at all).
Instead layerdiff asks ONNX Runtime for the graph it runs (`optimized_model_filepath`, at the deployed
optimization level): the kernels after every fusion, layout change and QDQ rewrite. That graph is then
run with optimizations off, so nothing is fused again, and only tensors that exist in it are read:

  * a candidate tensor is *available* when a node of the optimized graph still produces it (same name,
    same type, same shape); or when the node that computes it is still there under its own name (ONNX
    Runtime keeps node names, but its layout and INT8 passes rename some outputs), exactly, or as the
    INT8 output of the integer kernel that replaced it (QLinearConv for a Conv: its value then is that
    output dequantized with the kernel's own scale, the only value of it that exists); or when it
    follows exactly from available tensors through QuantizeLinear, DequantizeLinear or Cast nodes of
    the candidate (the values a fused kernel reads). layerdiff adds the nodes that compute these beside
    the graph, reading tensors it already computes, so what runs is unchanged;
  * the *kernel* behind a tensor is the optimized-graph node that computed it, looking back through
    the layout, Q/DQ and cast nodes ONNX Runtime inserted (QLinearConv, FusedConv, Conv on dequantized
    int8, an NCHWc Conv behind its ReorderOutput...).

The plain session and the exposed one then give bit-identical final outputs (tested).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import onnx

from layerdiff.backends.base import Kernel
from layerdiff.backends.ort import OrtSource, make_session, optimized_model
from layerdiff.backends.ortaliases import SIDE, OrtAliases
from layerdiff.backends.ortclaims import holders, misread, own_values
from layerdiff.backends.ortlayout import follow_layouts
from layerdiff.backends.ortops import (
    COMMUTES_WITH_ROUNDING,
    EXACT_STEPS,
    FLOATS,
    INTEGER_KERNELS,
    LAYOUT,
    LOW,
    NCHWC,
    ORT_TYPES,
)
from layerdiff.backends.ortstructure import same_shape
from layerdiff.errors import BackendError
from layerdiff.graph import tensor_info
from layerdiff.rewrite import with_nodes, with_outputs

__all__ = ["SIDE", "OrtKernels"]


class OrtKernels(OrtAliases):
    """The deployed ONNX Runtime session of a candidate, seen kernel by kernel (see the module doc)."""

    mode = "kernels"
    missing = "fused inside a kernel of the candidate: no value of it exists"

    def __init__(self, candidate: onnx.ModelProto, blob: bytes, providers: list | None = None,
                 level: str = "all", expect_provider: str | None = None, derived_from: bytes | None = None):
        self.providers, self.level, self.expect_provider = providers, level, expect_provider
        self.cblob, self.coutputs = blob, [o.name for o in candidate.graph.output]
        self.blob = optimized_model(blob, providers, level, derived_from=derived_from)
        self.graph = onnx.ModelProto.FromString(self.blob).graph
        self.kproducer = {o: n for n in self.graph.node for o in n.output if o}
        self.kinputs = {i.name for i in self.graph.input}
        cgraph = self._cgraph = candidate.graph
        self.cproducer = {o: n for n in cgraph.node for o in n.output if o}
        self.cinits = {t.name: t for t in cgraph.initializer}
        self.ctypes, self.cshapes = tensor_info(candidate)
        self.kinits = {t.name for t in self.graph.initializer}
        self.cnames = {n.name for n in cgraph.node if n.name}
        self._cnodes = {n.name: n for n in cgraph.node if n.name}
        self._derivations: dict[str, list[onnx.NodeProto] | None] = {}
        self._exact: set[str] = set()  # tensors computed beside the graph in place of their rounded alias
        self._lock = threading.RLock()
        self._info: dict[str, tuple[str, list]] | None = None
        self._types: dict[str, str] = {}
        self._aliases: dict[str, tuple[onnx.NodeProto, tuple[onnx.NodeProto, ...], str]] | None = None
        self._layouts: dict[str, tuple[int, ...] | str | None] | None = None

    @property
    def _kinfo(self) -> dict[str, tuple[str, list]]:
        """{tensor of the optimized graph: (its type, its shape) as ONNX Runtime states them} (one session
        with every tensor an output; no run)."""
        with self._lock:
            if self._info is None:
                names = [o for n in self.graph.node for o in n.output if o]
                sess = make_session(with_outputs(self.blob, names, present={o.name for o in self.graph.output}),
                                    self.providers, "candidate", level="disabled", derived_from=self.blob)
                # ONNX Runtime states a shape it does not know as [] too: a scalar only where the model says so
                self._info = {a.name: (a.type, a.shape if a.shape or self.cshapes.get(a.name) == [] else None)
                              for a in list(sess.sess.get_outputs()) + list(sess.sess.get_inputs())}
                self._types = {name: t for name, (t, _) in self._info.items()}
            return self._info

    @property
    def ktypes(self) -> dict[str, str]:
        """{tensor of the optimized graph: its type, e.g. 'tensor(uint8)'}."""
        self._kinfo  # noqa: B018  (made once, with the shapes)
        return self._types

    def layout(self, ktensor: str) -> tuple[int, ...] | str | None:
        """How the optimized graph's `ktensor` holds its value, by structure (the nodes that wrote it, not
        their names): None in the model's own layout; a permutation p where it holds the model's value
        transposed (its axis i is the model's axis p[i]: NHWC is (0, 2, 3, 1)); BLOCKED in an NCHWc
        blocked layout or any layout that cannot be read back. ONNX Runtime's layout passes insert a
        Transpose (or a ReorderInput) where a value enters channels-last (or NCHWc) kernels and one back
        where it leaves them; in between, values stay in that layout under names of the model's tensors."""
        with self._lock:
            if self._layouts is None:
                self._layouts = follow_layouts(self.graph, {t: shape for t, (_, shape) in self._kinfo.items()},
                                               self.cproducer, self._cnodes, set(self.kinits))
            return self._layouts.get(ktensor)

    def _surviving(self, tensor: str) -> bool:
        """A tensor of the optimized graph holding the candidate tensor's value as it is: same name, same
        type, and a shape that agrees (ONNX Runtime's layout passes can keep a name for a transposed value)."""
        return self._holds(tensor, tensor)

    def _holds(self, tensor: str, ktensor: str, upcast: bool = False) -> bool:
        """Whether the optimized graph's `ktensor` holds the candidate's `tensor` as it is: same type (or,
        `upcast`, an FP32 copy of an FP16 or BF16 tensor), and a shape that agrees."""
        if ktensor not in self.kproducer and ktensor not in self.kinputs:
            return False
        ktype, kshape = self._kinfo.get(ktensor, (None, None))
        want = ORT_TYPES.get(self.ctypes.get(tensor, 0))
        if upcast and want in ("tensor(float16)", "tensor(bfloat16)") and ktype == "tensor(float)":
            want = ktype
        if want is not None and ktype not in (None, want):
            return False
        if self.layout(ktensor) is not None:  # the value transposed or blocked: not the tensor as it is
            return False
        return same_shape(self.cshapes.get(tensor), kshape)

    def view(self, tensor: str) -> str:
        """"quantized" when the deployed candidate holds `tensor` only as an integer kernel's INT8 output."""
        if tensor not in self.aliases:
            return ""
        self.derivation(tensor)  # (where the op is computed exactly beside the graph, it is not rounded)
        return "" if tensor in self._exact else self.aliases[tensor][2]


    def derivation(self, tensor: str) -> list[onnx.NodeProto] | None:
        """The candidate's nodes that compute `tensor` from surviving tensors ([] if it survives itself),
        in order; None when it cannot be read exactly."""
        with self._lock:
            return self._derive(tensor, 0)

    def _derive(self, tensor: str, depth: int) -> list[onnx.NodeProto] | None:
        if tensor in self._derivations:
            return self._derivations[tensor]
        result: list[onnx.NodeProto] | None = None
        if self._surviving(tensor):
            result = []
        elif tensor in self.aliases:
            result = self._exact_before_rounding(tensor, depth)
            if result is None:
                result = list(self.aliases[tensor][1])  # nodes beside the graph, named already
        elif depth < 8 and tensor in self.cproducer and self.cproducer[tensor].op_type in EXACT_STEPS:
            node = self.cproducer[tensor]
            steps: list[onnx.NodeProto] = []
            for name in node.input:
                if not name or name in self.cinits:
                    continue
                sub = self._derive(name, depth + 1)
                if sub is None:
                    steps = None  # type: ignore[assignment]
                    break
                steps += [s for s in sub if s not in steps]
            if steps is not None:
                result = steps + [node]
        self._derivations[tensor] = result
        return result

    def _exact_before_rounding(self, tensor: str, depth: int) -> list[onnx.NodeProto] | None:
        """Where the deployed graph holds `tensor` only rounded because ONNX Runtime moved the candidate's
        QuantizeLinear above the op that computes it (a MaxPool, a Transpose: ops that commute with a
        per-tensor rounding), the op itself computed beside the graph from its float input: the value the
        candidate names, exactly; the rounding stays with the conversion row that does it."""
        node = self.cproducer.get(tensor)
        if self.aliases[tensor][2] != "quantized" or node is None or node.op_type not in COMMUTES_WITH_ROUNDING \
                or depth >= 8:
            return None
        steps: list[onnx.NodeProto] = []
        for name in node.input:
            if not name or name in self.cinits:
                continue
            sub = self._derive(name, depth + 1)
            if sub is None or self.view(name) == "quantized":
                return None
            steps += [s for s in sub if s not in steps]
        self._exact.add(tensor)
        return steps + [node]

    def available(self, tensor: str) -> bool:
        return self.derivation(tensor) is not None

    def groups(self) -> list:
        return []  # fusions show as tensors that no longer exist

    def check_missing(self, tensors: Sequence[str], feeds) -> dict[str, str] | None:
        """Check that no value of the deployed graph holds `tensors` (ortclaims): one that does is read
        from it from now on. {tensor: the value holding it}."""
        feeds = list(feeds)
        # every read through a permutation is checked too: a layout followed wrongly must not be read
        permuted = [t for t, (_, nodes, _) in self.aliases.items()
                    if any(n.op_type == "Transpose" and n.name.startswith(SIDE) for n in nodes)]
        # the candidate's own values on the first sample, once for both checks
        own = own_values(self, sorted(set(permuted) | set(tensors)), feeds[0]) if feeds and (permuted or tensors) \
            else None
        wrong = misread(self, permuted, feeds[0], own) if permuted and feeds else []
        with self._lock:
            for tensor in wrong:
                del self.aliases[tensor]
            self._derivations.clear()
            self._exact.clear()
        found = holders(self, list(tensors) + wrong, feeds, own)
        with self._lock:
            aliases = self.aliases
            for tensor, holder in found.items():
                knode = self._behind(self.kproducer.get(holder.ktensor))
                aliases[tensor] = (knode, holder.nodes(SIDE + tensor), "quantized" if holder.params else "")
            self._derivations.clear()
            self._exact.clear()
        return {t: h.ktensor for t, h in found.items()}

    def matches_plain(self) -> bool | None:
        return True  # the optimized graph is the deployed one, run without further changes

    def kernel(self, tensor: str) -> Kernel | None:
        steps = self.derivation(tensor)
        if steps is None:
            return None
        if tensor in self.aliases:  # (no kernel: a constant ONNX Runtime folded before the run)
            knode = self.aliases[tensor][0]
            return self._describe(knode) if knode is not None else None
        if steps:  # computed beside the graph from a surviving tensor: the kernel that made that one
            first = next((i for s in steps for i in s.input if i and i not in self.cinits and self.available(i)
                          and not i.startswith(SIDE)), None)
            return self.kernel(first) if first else None
        node = self._behind(self.kproducer.get(tensor))
        return self._describe(node) if node is not None else None

    def _behind(self, node: onnx.NodeProto | None) -> onnx.NodeProto | None:
        """The kernel behind `node`, looking back through the nodes that only carry its value (_inserted)."""
        for _ in range(32):
            if node is None or not self._inserted(node):
                return node
            node = self.kproducer.get(node.input[0]) if node.input else None
        return None

    def _inserted(self, node: onnx.NodeProto) -> bool:
        """A node that only carries a value to the kernel behind it: Q/DQ, ONNX Runtime's layout changes
        (NCHWc reorders, inserted Transposes), and casts between floats that are not the model's own."""
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.op_type in NCHWC:
            return True
        if node.op_type in LAYOUT:  # one ONNX Runtime made (a name of its own), or writing a value of its own
            return node.name not in self.cnames or not all(o in self.ctypes for o in node.output if o)
        if node.op_type == "Cast":
            own = node.name in self.cnames and "::cast_" not in node.name
            return self.ktypes.get(node.input[0]) in FLOATS and not own
        return False

    def _describe(self, node: onnx.NodeProto) -> Kernel:
        data = [t for t in node.input if t and (t in self.kproducer or t in self.kinputs)]
        types = [self.ktypes.get(t) for t in data]
        if not any(t in FLOATS for t in types):  # its float operand is a weight (a Gather's table): its output
            types += [self.ktypes.get(t) for t in node.output if t]
        low = next((LOW[t] for t in types if t in LOW), None)
        if node.op_type in INTEGER_KERNELS:
            precision = low or "int8"
        elif low:
            precision = low  # data movement (MaxPool, Flatten, ...) on quantized values
        elif "tensor(float16)" in types:
            precision = "fp16"
        elif "tensor(bfloat16)" in types:
            precision = "bf16"
        else:
            precision = "fp32"
        dq = any(self.kproducer[t].op_type == "DequantizeLinear" for t in data if t in self.kproducer)
        return Kernel(node.op_type, precision, dequantized_inputs=dq and precision not in LOW.values())

    def open(self, tensors: Sequence[str], cancel: threading.Event | None = None) -> OrtSource:
        nodes, inits, outputs = self._side_graph(tensors)
        blob = with_nodes(self.blob, nodes, inits)
        blob = with_outputs(blob, list(outputs), present={o.name for o in self.graph.output})
        return OrtSource(blob, outputs, self.providers, "disabled", "candidate (kernels exposed)",
                         self.expect_provider, cancel, low_memory=True)

    def _side_graph(self, tensors: Sequence[str]):
        """Copies of the candidate's exact nodes that compute the wanted tensors beside the optimized
        graph, under names of their own; and {session output: wanted tensor}."""
        nodes: dict[str, onnx.NodeProto] = {}
        inits: dict[str, onnx.TensorProto] = {}
        outputs: dict[str, str] = {}
        for tensor in dict.fromkeys(tensors):
            steps = self.derivation(tensor)
            if steps is None:
                raise BackendError(f"internal: tensor '{tensor}' is not available in the deployed candidate")
            for step in steps:
                key = SIDE + step.output[0] if not step.name.startswith(SIDE) else step.output[0]
                if key in nodes:
                    continue
                if step.name.startswith(SIDE):  # an alias: reads the optimized graph's own tensors
                    nodes[key] = step
                    continue
                copy = onnx.NodeProto()
                copy.CopyFrom(step)
                copy.name = key
                for i, name in enumerate(copy.input):
                    if not name:
                        continue
                    if name in self.cinits:
                        if SIDE + name not in inits:
                            init = onnx.TensorProto()
                            init.CopyFrom(self.cinits[name])
                            init.name = SIDE + name
                            inits[SIDE + name] = init
                        copy.input[i] = SIDE + name
                    elif not self._surviving(name):
                        copy.input[i] = SIDE + name
                for i, name in enumerate(copy.output):
                    if name:
                        copy.output[i] = SIDE + name
                nodes[key] = copy
            outputs[SIDE + tensor if steps else tensor] = tensor
        return list(nodes.values()), list(inits.values()), outputs
