"""Which value of ONNX Runtime's optimized graph holds a candidate tensor that does not survive under its
own name: the half of OrtKernels (backends/kernels.py) that pairs values, with the side nodes that read
each back (dequantized, permuted to the model's layout). By structure first: an integer kernel's INT8
output by its output scale and zero point (the candidate's QuantizeLinear that has them); then a node of
the same name and op whose inputs are the same values; names break ties only."""

from __future__ import annotations

import onnx

from layerdiff.backends.ortlayout import BLOCKED, inverse
from layerdiff.backends.ortstructure import _structure, same_shape, to_model_layout
from layerdiff.backends.ortnames import PRE_Q, TOKEN, UPCAST_PREFIX
from layerdiff.backends.ortops import (
    DATA_MOVEMENT,
    FLOATS,
    INTEGER_KERNELS,
    LOW,
    NCHWC_DOMAIN,
    ORT_TYPES,
    OUTPUT_QPARAMS,
    QLINEAR,
)

SIDE = "layerdiff/"  # prefix of the nodes, tensors and initializers layerdiff adds beside the graph


class OrtAliases:
    """Mixed into OrtKernels, whose attributes it reads (kproducer, cproducer, ctypes, cshapes, kinits,
    cnames, _kinfo, _lock, _aliases) and whose layout(), _surviving(), _holds() and _behind() it calls."""

    @property
    def aliases(self) -> dict[str, tuple[onnx.NodeProto, tuple[onnx.NodeProto, ...], str]]:
        """{candidate tensor that does not survive by name: (the optimized-graph node that computes it, or
        None for a constant folded before the run; the nodes beside the graph giving its value; view)}.
        In order: a renamed copy (NAME_pre_q, the FP32 copy of an FP16 value); an integer kernel's INT8
        output, by its output scale and zero point (view "quantized"); a folded initializer or the twin a
        common-subexpression elimination kept; an NCHWc kernel's blocked output; then the node of the same
        name and op (an exact alias, view "", or INT8 values dequantized with the kernel's own scale and
        zero point, view "quantized")."""
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
        self._folded_and_shared(out, held)
        self._blocked_outputs(out, held)
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
            kshape = to_model_layout(kshape, self.layout(kout))
            nodes = self._read(kout, tensor)
            if nodes is not None and ((same_inputs and same_shape(cshape, kshape)) or (
                    cshape is not None and kshape is not None and same_shape(cshape, kshape))):
                return knode, nodes, ""
            return None
        quantized = knode.op_type == QLINEAR.get(cnode.op_type) or (
            knode.op_type == cnode.op_type and ktype in LOW and ctype in FLOATS)
        if not quantized or ctype not in FLOATS:
            return None
        kout, kshape = self._nchw(kout, kshape, kconsumers)
        kshape = to_model_layout(kshape, self.layout(kout))
        params = self._qparams(knode)
        known = cshape is not None and kshape is not None
        if params is None or not same_shape(cshape, kshape) or not (known or same_inputs):
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
        return first, onnx.helper.make_node("Transpose", [mid], [side], name=side, perm=inverse(lay))

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
            kshape = to_model_layout(self._kinfo.get(knode.output[0], (None, None))[1], self.layout(knode.output[0]))
            nodes = self._read(knode.output[0], tensor, params)
            if nodes is None or not same_shape(self.cshapes.get(tensor), kshape):
                continue
            out[tensor] = (knode, nodes, "quantized")
            held[tensor] = knode.output[0]

    def _folded_and_shared(self, out: dict, held: dict[str, str]) -> None:
        """Values ONNX Runtime computed before the run, or once for two tensors: a candidate tensor folded
        into an initializer of the optimized graph (a ConstantOfShape of a static shape) is that
        initializer; a tensor its common-subexpression elimination dropped has the value of the identical
        computation it kept (an LSTM's two zero initial states become one), by structure: the same op and
        attributes on the same values."""
        kinit = {t.name: t for t in self.graph.initializer}
        for tensor in self.cproducer:
            if tensor in out or tensor not in kinit or self._surviving(tensor):
                continue
            init = kinit[tensor]
            if ORT_TYPES.get(init.data_type) == ORT_TYPES.get(self.ctypes.get(tensor, 0)) and \
                    same_shape(self.cshapes.get(tensor), list(init.dims)):
                side = SIDE + tensor
                out[tensor] = (None, (onnx.helper.make_node("Identity", [tensor], [side], name=side),), "")
                held[tensor] = tensor
        keys = _structure(self._cgraph)
        kept: dict[tuple, str] = {("value", i.name): i.name for i in self._cgraph.input if i.name in self.kinputs}
        for tensor, key in keys.items():
            if key is not None and (tensor in out or self._surviving(tensor)):
                kept.setdefault(key, tensor)
        for tensor, key in keys.items():
            twin = kept.get(key) if key is not None else None
            if twin is None or twin == tensor or tensor in out or self._surviving(tensor):
                continue
            side = SIDE + tensor
            if twin in out:  # the twin's own nodes, then a copy of its value under this tensor's name
                knode, nodes, view = out[twin]
                out[tensor] = (knode, nodes + (onnx.helper.make_node("Identity", [SIDE + twin], [side], name=side),),
                               view)
            else:
                nodes = self._read(twin, tensor)
                if nodes is None:
                    continue
                out[tensor] = (self.kproducer.get(twin), nodes, "")
            held[tensor] = held.get(twin, twin)

    def _blocked_outputs(self, out: dict, held: dict[str, str]) -> None:
        """Pair the outputs of ONNX Runtime's NCHWc kernels (blocked layout) by structure, in graph order:
        a kernel reads the value paired with its input; the candidate's node of its op reading that value,
        followed through what the kernel fuses (a BatchNormalization folded into its weights, the Add of
        its Sum input, its activation), writes the tensor the kernel holds. It is read back to NCHW by a
        ReorderOutput beside the graph."""
        holder = {k: c for c, k in held.items()}  # optimized-graph tensor -> the candidate tensor it holds
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.cproducer.values():
            for t in node.input:
                consumers.setdefault(t, []).append(node)
        for knode in self.graph.node:
            if knode.domain != NCHWC_DOMAIN or knode.op_type not in ("Conv", "MaxPool", "AveragePool",
                                                                     "GlobalAveragePool", "GlobalMaxPool"):
                continue
            data = knode.input[0]
            source = data if self._surviving(data) or data in self.kinputs else holder.get(data)
            if source is None and self.kproducer.get(data) is not None \
                    and self.kproducer[data].op_type == "ReorderInput":
                reordered = self.kproducer[data].input[0]
                source = reordered if self._surviving(reordered) or reordered in self.kinputs else \
                    holder.get(reordered)
            if source is None:
                continue
            start = [c for c in consumers.get(source, ()) if c.op_type == knode.op_type and c.input[0] == source]
            if len(start) != 1:
                continue
            tensor = self._fused_end(start[0], knode, consumers, holder)
            shape = self.cshapes.get(tensor)
            if tensor is None or tensor in out or self._surviving(tensor) or shape is None or len(shape) != 4 \
                    or not isinstance(shape[1], int):
                continue
            side = SIDE + tensor
            out[tensor] = (knode, (onnx.helper.make_node("ReorderOutput", [knode.output[0]], [side], name=side,
                                                         domain=NCHWC_DOMAIN, channels=shape[1]),), "")
            held[tensor] = knode.output[0]
            holder[knode.output[0]] = tensor

    def _fused_end(self, first: onnx.NodeProto, knode: onnx.NodeProto, consumers, holder) -> str | None:
        """The candidate tensor an NCHWc kernel's output holds: `first`'s output, then what the kernel fused
        after it (a BatchNormalization, the Add of its Sum input, its activation)."""
        tensor = first.output[0]
        summed = knode.input[3] if len(knode.input) > 3 and knode.input[3] else ""
        activation = next((a.s.decode() for a in knode.attribute if a.name == "activation"), "")
        for _ in range(4):
            nexts = consumers.get(tensor, [])
            if len(nexts) != 1:
                break
            nxt = nexts[0]
            if nxt.op_type == "BatchNormalization" and nxt.input[0] == tensor:
                tensor = nxt.output[0]
            elif summed and nxt.op_type == "Add" and (holder.get(summed, summed) in nxt.input):
                tensor, summed = nxt.output[0], ""
            elif activation and nxt.op_type == activation:
                tensor, activation = nxt.output[0], ""
            else:
                break
        return None if summed or activation else tensor

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
        constant = self._cconstant()
        cdata = [t for t in cnode.input if t and t not in constant and t not in self.kinits]  # folded: weights
        kdata = [t for t in knode.input if t and t not in self.kinits]
        if not cdata or len(cdata) > len(kdata):
            return False
        for c, k in zip(cdata, kdata):  # integer kernels put scales between data inputs: data first, in order
            source = c
            while source not in held and source in self.cproducer and self.cproducer[source].op_type in (
                    "DequantizeLinear", "QuantizeLinear"):
                source = self.cproducer[source].input[0]  # the kernel reads the INT8 value itself
            unrounded = k  # the value ONNX Runtime's QDQ propagation quantizes ahead of the kernel
            while unrounded in self.kproducer and self.kproducer[unrounded].op_type == "QuantizeLinear":
                unrounded = self.kproducer[unrounded].input[0]
            if not any(x == c or x == source or held.get(c) == x or held.get(source) == x or self._moved(c, x, held)
                       for x in {k, unrounded}):
                return False
        return True

    def _cconstant(self) -> set[str]:
        """The candidate's tensors computed from weights alone (Constant nodes, and what reads only them):
        ONNX Runtime folds them into initializers of names of its own."""
        if getattr(self, "_constant_cache", None) is None:
            from layerdiff.topology import node_order

            constant = set(self.cinits)
            nodes = list(self._cgraph.node)
            for index in node_order(self._cgraph):
                node = nodes[index]
                if all(not t or t in constant for t in node.input):
                    constant.update(o for o in node.output if o)
            self._constant_cache = constant
        return self._constant_cache

    def _moved(self, c: str, k: str, held: dict[str, str]) -> bool:
        """Whether `k` is the value the model's Transpose writing `c` reads: ONNX Runtime's transpose
        optimizer moved that Transpose below the reader (the layout pass follows it, ortlayout)."""
        node = self.cproducer.get(c)
        if node is None or node.op_type != "Transpose" or not node.input:
            return False
        return k == node.input[0] or held.get(node.input[0]) == k

    def _nchw(self, tensor: str, shape, consumers) -> tuple[str, list | None]:
        """An NHWC kernel output (ONNX Runtime's layout pass for integer kernels) is followed by the
        Transpose back to NCHW it inserted: read that one."""
        if self.layout(tensor) != (0, 2, 3, 1):
            return tensor, shape
        for node in consumers.get(tensor, ()):
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if node.op_type == "Transpose" and perm == [0, 3, 1, 2] and self.layout(node.output[0]) is None:
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
