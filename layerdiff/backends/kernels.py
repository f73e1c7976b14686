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
from layerdiff.backends.ortnames import PRE_Q, TOKEN, UPCAST_PREFIX
from layerdiff.backends.ortops import (DATA_MOVEMENT, EXACT_STEPS, FLOATS, INTEGER_KERNELS, KEEPS_LAYOUT, LAYOUT, LOW,
                                       NCHWC, NCHWC_DOMAIN, NHWC_DOMAIN, ORT_TYPES, OUTPUT_QPARAMS, QLINEAR)
from layerdiff.errors import BackendError
from layerdiff.graph import tensor_info
from layerdiff.topology import node_order
from layerdiff.rewrite import with_nodes, with_outputs

SIDE = "layerdiff/"  # prefix of the nodes, tensors and initializers layerdiff adds beside the graph
BLOCKED = "blocked"  # OrtKernels.layout: a value in a layout that cannot be read back (NCHWc, or not followed)
class OrtKernels:
    """The deployed ONNX Runtime session of a candidate, seen kernel by kernel (see the module doc)."""

    mode = "kernels"
    missing = "fused inside a kernel of the candidate: no value of it exists"

    def __init__(self, candidate: onnx.ModelProto, blob: bytes, providers: list | None = None,
                 level: str = "all", expect_provider: str | None = None):
        self.providers, self.level, self.expect_provider = providers, level, expect_provider
        self.blob = optimized_model(blob, providers, level)
        self.graph = onnx.ModelProto.FromString(self.blob).graph
        self.kproducer = {o: n for n in self.graph.node for o in n.output if o}
        self.kinputs = {i.name for i in self.graph.input}
        cgraph = candidate.graph
        self.cproducer = {o: n for n in cgraph.node for o in n.output if o}
        self.cinits = {t.name: t for t in cgraph.initializer}
        self.ctypes, self.cshapes = tensor_info(candidate)
        self.kinits = {t.name for t in self.graph.initializer}
        self.cnames = {n.name for n in cgraph.node if n.name}
        self._cnodes = {n.name: n for n in cgraph.node if n.name}
        self._derivations: dict[str, list[onnx.NodeProto] | None] = {}
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
                self._info = {a.name: (a.type, a.shape)
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
                self._layouts = self._follow_layouts()
            return self._layouts.get(ktensor)

    def _follow_layouts(self) -> dict[str, tuple[int, ...] | str | None]:
        """Every value's layout, in one pass over the optimized graph in topological order."""
        layouts: dict[str, tuple[int, ...] | str | None] = {}
        constant: set[str] = set(self.kinits)  # computed from initializers alone: weights have no layout
        nodes = list(self.graph.node)
        for index in node_order(self.graph):
            node = nodes[index]
            outs = [o for o in node.output if o]
            if all(not t or t in constant for t in node.input):
                constant.update(outs)
                continue
            # a constant operand is transposed by ONNX Runtime to the layout of the value it meets
            data = [t for t in node.input if t and t not in constant]
            ins = [layouts.get(t) for t in data]
            result = self._node_layout(node, outs[0] if outs else "", data, ins)
            for o in outs:
                layouts[o] = result
        return layouts

    def _node_layout(self, node: onnx.NodeProto, ktensor: str, data: list[str], ins: list) -> tuple[int, ...] | str | None:
        first = ins[0] if ins else None
        if node.op_type == "Transpose" and node.domain in ("", "ai.onnx"):
            perm = _perm(node, _rank(self._kinfo.get(ktensor, (None, None))[1]))
            # the model's own Transpose, where its output kept its name, or where ONNX Runtime renamed that
            # output (an INT8 conversion after it) but kept the node's name
            own = self.cproducer.get(ktensor)
            if own is None or own.op_type != "Transpose":
                own = self._cnodes.get(node.name)
            if first == BLOCKED or perm is None:
                return BLOCKED
            composed = tuple(first[i] for i in perm) if first is not None else perm
            if own is not None and own.op_type == "Transpose":  # relative to the model's value: its input
                mine = _perm(own, len(composed))  # transposed by the model's perm
                if mine is None or len(mine) != len(composed):
                    return BLOCKED
                composed = tuple(_inverse(mine)[a] for a in composed)
            return None if composed == tuple(range(len(composed))) else composed
        if node.op_type == "ReorderOutput":  # NCHWc back to NCHW, or to NHWC with channels_last
            last = next((a.i for a in node.attribute if a.name == "channels_last"), 0)
            return (0, 2, 3, 1) if last else None
        if node.domain == NCHWC_DOMAIN or node.op_type == "ReorderInput":
            return BLOCKED
        if node.op_type in KEEPS_LAYOUT or node.domain == NHWC_DOMAIN:
            # elementwise ops and the channels-last kernels compute in the layout they read; a value read in
            # two layouts at once is not one ONNX Runtime writes
            ranked = [lay for t, lay in zip(data, ins) if _rank(self._kinfo.get(t, (None, None))[1]) != 0]
            if not ranked:
                return None
            return ranked[0] if all(lay == ranked[0] for lay in ranked) else BLOCKED
        # any other op reads and writes the model's layout, or a layout this cannot follow
        return None if all(lay is None for lay in ins) else BLOCKED

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
        return _same_shape(self.cshapes.get(tensor), kshape)

    @property
    def aliases(self) -> dict[str, tuple[onnx.NodeProto, tuple[onnx.NodeProto, ...], str]]:
        """{candidate tensor that does not survive by name: (the optimized-graph node that computes it, a
        node beside the graph giving its value, view)}: the node of the same name and op (an exact alias,
        view ""), or the integer kernel that replaced it, or the same op moving INT8 values (its output
        dequantized with the kernel's own scale and zero point: view "quantized")."""
        with self._lock:
            if self._aliases is None:
                self._aliases = self._find_aliases()
            return self._aliases

    def _find_aliases(self) -> dict[str, tuple[onnx.NodeProto, tuple[onnx.NodeProto, ...], str]]:
        info = self._kinfo
        by_name: dict[str, onnx.NodeProto] = {}
        for node in self.graph.node:
            by_name.setdefault(TOKEN.sub("", node.name), node)
        kconsumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for t in node.input:
                kconsumers.setdefault(t, []).append(node)
        out: dict[str, tuple[onnx.NodeProto, tuple[onnx.NodeProto, ...], str]] = {}
        held: dict[str, str] = {}  # candidate tensor -> the optimized-graph tensor holding it (maybe INT8)
        # ONNX Runtime's QDQ propagation moves a QuantizeLinear up across data movement (a Slice, a Squeeze)
        # to right after the node computing the value, whose output it renames NAME_pre_q: the same value
        # and an FP16 tensor the CPU provider computes in FP32 (no FP16 kernel for the nodes around it)
        # exists only as its FP32 copy, InsertedPrecisionFreeCast_NAME: the value the deployed session has
        for tensor in self.cproducer:
            if self._surviving(tensor):
                continue
            for renamed, upcast in ((tensor + PRE_Q, False), (UPCAST_PREFIX + tensor, True)):
                if renamed not in self.kproducer or not self._holds(tensor, renamed, upcast):
                    continue
                # the model's own node writing it is its kernel; a node ONNX Runtime inserted (a reorder
                # back from NCHWc) carries the value of the kernel behind it
                knode = self.kproducer[renamed]
                kernel = knode if knode.name in self.cnames else self._behind(knode)
                if kernel is None or self._reads_inserted_rounding(kernel):
                    continue  # computed from values the propagation rounded: not the candidate's value
                nodes = self._read(renamed, tensor)
                if nodes is None:
                    continue
                out[tensor] = (kernel, nodes, "")
                held[tensor] = renamed
                break
        self._integer_outputs(out, held)
        for _ in range(16):  # in passes: a node's inputs may be aliases found in the same pass
            found = len(out)
            for cnode in self.cproducer.values():
                knode = by_name.get(cnode.name) if cnode.name else None
                if knode is None:
                    continue
                for i, tensor in enumerate(cnode.output):
                    if (not tensor or tensor in out or i >= len(knode.output) or not knode.output[i]
                            or self._surviving(tensor)):
                        continue
                    if knode.output[i] in held.values():  # its value is paired by structure already
                        continue
                    alias = self._alias_of(cnode, knode, i, tensor, info, kconsumers, held)
                    if alias is not None:
                        out[tensor] = alias
                        held[tensor] = alias[1][0].input[0]
            if len(out) == found:
                return out
        return out

    def _reads_inserted_rounding(self, node: onnx.NodeProto) -> bool:
        """Whether `node` reads, through ONNX Runtime's layout nodes, a DequantizeLinear that is not the
        candidate's own: a value its QDQ propagation rounded (moved across two layout ops at level basic,
        `Reshape(A_post_dq) -> B_pre_q` is B computed from A rounded to INT8, not the candidate's B)."""
        for t in node.input:
            at = self.kproducer.get(t)
            for _ in range(16):
                if at is None:
                    break
                if at.op_type == "DequantizeLinear":
                    if at.name.split("/duplicated", 1)[0] not in self.cnames:
                        return True
                    break
                if at.name in self.cnames or not self._inserted(at) or not at.input:
                    break
                at = self.kproducer.get(at.input[0])
        return False

    def _alias_of(self, cnode, knode, i, tensor, info, kconsumers, held):
        """(knode, the node beside the graph giving `tensor`, view) when knode's output i holds `tensor`."""
        kout, (ktype, kshape) = knode.output[i], info.get(knode.output[i], (None, None))
        ctype = ORT_TYPES.get(self.ctypes.get(tensor, 0))
        cshape = self.cshapes.get(tensor)
        # the same inputs, or a shape that says it is the same value: ONNX Runtime may compute a node of the
        # same name in another layout (its transpose optimizer moves Transposes across Slice, Squeeze...)
        same_inputs = self._reads_same(cnode, knode, held)
        if knode.op_type == cnode.op_type and ktype == ctype:
            if self._reads_inserted_rounding(knode) and not same_inputs:
                return None  # it computes from a value ONNX Runtime's QDQ propagation rounded
            kshape = _to_model_layout(kshape, self.layout(kout))
            nodes = self._read(kout, tensor)
            if nodes is not None and ((same_inputs and _same_shape(cshape, kshape)) or (
                    cshape is not None and kshape is not None and _same_shape(cshape, kshape))):
                return knode, nodes, ""
            return None
        quantized = knode.op_type == QLINEAR.get(cnode.op_type) or (
            knode.op_type == cnode.op_type and ktype in LOW and ctype in FLOATS)
        if not quantized or ctype not in FLOATS:
            return None
        kout, kshape = self._nchw(kout, kshape, kconsumers)
        kshape = _to_model_layout(kshape, self.layout(kout))
        params = self._qparams(knode)
        known = cshape is not None and kshape is not None
        if params is None or not _same_shape(cshape, kshape) or not (known or same_inputs):
            return None
        nodes = self._read(kout, tensor, params)
        return (knode, nodes, "quantized") if nodes is not None else None

    def _read(self, ktensor: str, tensor: str, params: list[str] | None = None) -> tuple[onnx.NodeProto, ...] | None:
        """The nodes beside the graph that give the candidate's `tensor` from the optimized graph's `ktensor`:
        dequantized with `params` (an integer kernel's INT8 output), then permuted back to the model's
        layout where ONNX Runtime holds it transposed; None where its layout cannot be read back."""
        lay = self.layout(ktensor)
        if lay == BLOCKED:
            return None
        side = SIDE + tensor
        mid = side + "/nhwc" if isinstance(lay, tuple) else side
        first = onnx.helper.make_node("DequantizeLinear", [ktensor, *params], [mid], name=mid) if params else \
            onnx.helper.make_node("Identity", [ktensor], [mid], name=mid)
        if not isinstance(lay, tuple):
            return (first,)
        return first, onnx.helper.make_node("Transpose", [mid], [side], name=side, perm=_inverse(lay))

    def _integer_outputs(self, out: dict, held: dict[str, str]) -> None:
        """Pair each integer kernel's INT8 output by structure: its output scale and zero point are those
        of one QuantizeLinear of the candidate, so it holds that QuantizeLinear's input rounded (the input
        of the Relu or Clip the QDQ fusion absorbed, where one stood between: the kernel's value is the
        rounded activation, not the Conv's own output), whatever the kernel is named."""
        qnodes: dict[tuple[str, str], list[onnx.NodeProto]] = {}
        for c in self.cproducer.values():
            if c.op_type == "QuantizeLinear" and len(c.input) >= 3 and c.input[2]:
                qnodes.setdefault((c.input[1], c.input[2]), []).append(c)
        for knode in self.graph.node:
            if knode.op_type not in INTEGER_KERNELS or not knode.output or not knode.output[0]:
                continue
            params = self._qparams(knode)
            quants = qnodes.get(tuple(params), []) if params else []
            if len(quants) != 1:
                continue
            tensor = quants[0].input[0]
            if (tensor in out or self._surviving(tensor) or ORT_TYPES.get(self.ctypes.get(tensor, 0)) not in FLOATS
                    or not self._computes(knode, tensor)):
                continue
            kshape = _to_model_layout(self._kinfo.get(knode.output[0], (None, None))[1], self.layout(knode.output[0]))
            nodes = self._read(knode.output[0], tensor, params)
            if nodes is None or not _same_shape(self.cshapes.get(tensor), kshape):
                continue
            out[tensor] = (knode, nodes, "quantized")
            held[tensor] = knode.output[0]

    def _computes(self, knode: onnx.NodeProto, tensor: str) -> bool:
        """Whether the candidate computes `tensor` with the float op `knode` is the integer kernel of,
        through the activations a QDQ fusion absorbs (Relu, Clip)."""
        node = self.cproducer.get(tensor)
        for _ in range(4):
            if node is None:
                return False
            if QLINEAR.get(node.op_type) == knode.op_type:
                return True
            if node.op_type not in ("Relu", "Clip") or not node.input:
                return False
            node = self.cproducer.get(node.input[0])
        return False

    def _reads_same(self, cnode: onnx.NodeProto, knode: onnx.NodeProto, held: dict[str, str]) -> bool:
        """Whether every value `knode` reads is the value `cnode` reads there (the same tensor, or the
        optimized graph's tensor holding it, INT8 or not); weights are not compared."""
        cdata = [t for t in cnode.input if t and t not in self.cinits and t not in self.kinits]  # folded: weights
        kdata = [t for t in knode.input if t and t not in self.kinits]
        if not cdata or len(cdata) > len(kdata):
            return False
        for c, k in zip(cdata, kdata):  # integer kernels put scales between data inputs: data first, in order
            source = c
            while source not in held and source in self.cproducer and self.cproducer[source].op_type in (
                    "DequantizeLinear", "QuantizeLinear"):
                source = self.cproducer[source].input[0]  # the kernel reads the INT8 value itself
            if not (k == c or k == source or held.get(c) == k or held.get(source) == k):
                return False
        return True

    def _nchw(self, tensor: str, shape, consumers) -> tuple[str, list | None]:
        """An NHWC kernel output (ONNX Runtime's layout pass for integer kernels) is followed by the
        Transpose back to NCHW it inserted: read that one."""
        for node in consumers.get(tensor, ()):
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if node.op_type == "Transpose" and perm == [0, 3, 1, 2] and node.output[0] not in self.ctypes:
                return node.output[0], self._kinfo.get(node.output[0], (None, None))[1]
        return tensor, shape

    def _qparams(self, node: onnx.NodeProto, depth: int = 0) -> list[str] | None:
        """The (scale, zero point) initializers of `node`'s INT8 output."""
        if node.op_type in OUTPUT_QPARAMS:
            s, z = OUTPUT_QPARAMS[node.op_type]
            names = [node.input[s], node.input[z]] if len(node.input) > z else []
            return names if names and all(n in self.kinits for n in names) else None
        if node.op_type in DATA_MOVEMENT and depth < 16 and node.input and node.input[0] in self.kproducer:
            return self._qparams(self.kproducer[node.input[0]], depth + 1)
        return None

    def view(self, tensor: str) -> str:
        """"quantized" when the deployed candidate holds `tensor` only as an integer kernel's INT8 output."""
        return self.aliases[tensor][2] if tensor in self.aliases else ""


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

    def available(self, tensor: str) -> bool:
        return self.derivation(tensor) is not None

    def groups(self) -> list:
        return []  # fusions show as tensors that no longer exist

    def matches_plain(self) -> bool | None:
        return True  # the optimized graph is the deployed one, run without further changes

    def kernel(self, tensor: str) -> Kernel | None:
        steps = self.derivation(tensor)
        if steps is None:
            return None
        if tensor in self.aliases:
            return self._describe(self.aliases[tensor][0])
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
        if node.op_type in LAYOUT:
            return not all(o in self.ctypes for o in node.output if o)
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


def _perm(node: onnx.NodeProto, rank: int | None) -> tuple[int, ...] | None:
    """A Transpose's permutation (none given: the axes reversed, which needs the rank)."""
    perm = next((tuple(a.ints) for a in node.attribute if a.name == "perm"), None)
    return perm if perm is not None else (tuple(reversed(range(rank))) if rank is not None else None)


def _rank(shape) -> int | None:
    return None if shape is None else len(shape)


def _to_model_layout(shape, layout):
    """The shape of a value held in `layout` (a permutation) as the model's tensor would have it."""
    if shape is None or not isinstance(layout, tuple) or len(shape) != len(layout):
        return shape
    out = [None] * len(layout)
    for i, axis in enumerate(layout):
        out[axis] = shape[i]
    return out


def _inverse(perm: tuple[int, ...]) -> list[int]:
    inv = [0] * len(perm)
    for i, axis in enumerate(perm):
        inv[axis] = i
    return inv


def _same_shape(a, b) -> bool:
    """Shapes that agree wherever both are known (None: unknown), after dropping dimensions of size 1 (the
    same values in the same order: ONNX Runtime writes [N, C, 1, 1] as [N, 1, 1, C] in its channels-last
    kernels, and the capture reshapes such a value back)."""
    if a is None or b is None:
        return True
    a, b = [x for x in a if x != 1], [x for x in b if x != 1]
    return len(a) == len(b) and all(not isinstance(x, int) or not isinstance(y, int) or x == y for x, y in zip(a, b))
