"""Which ONNX nodes an engine layer came from (docs/trt-engine-info.md sections 6 and 7).

`Metadata` records (`[ONNX Layer: name]` joined by U+001E or U+001F) are authoritative: exact node names.
Without them the layer name is parsed: `A + B` (vertical fusion), `A || B` (horizontal merge), `PWN(a, PWN(b))`
(pointwise fusion), `{ForeignNode[first...last]}` (a Myelin region), Myelin kernel suffixes
(`<name with . as _>_myl<g>_<i>`), and TensorRT's own names, which have no ONNX node. Every part (a `+` or
`||` part, a PWN argument, either end of a ForeignNode range) is looked up by the same rule:

with a model, in this order
  1. a node of that name;
  2. an initializer or graph input of that name: the first node, in topological order, that reads it
     (`conv1.weight`, `270` -> the Conv or QuantizeLinear that reads the weight);
  3. a node in Myelin's spelling (suffix `_myl<g>_<i>` dropped, '.' written '_');
  and parts that match none are dropped. A ForeignNode range is every node, in topological order, from
  the earliest to the latest node its ends resolve to.
without a model, TensorRT's own names and names that look like tensors (`conv1.weight`, `onnx::Mul_4`,
  `x_output_0`, `name:0`, `270`) are dropped, since they cannot be resolved; every other part is kept,
  Myelin suffix dropped, as a candidate node name (for a ForeignNode range: its two ends).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from layerdiff.graph import LoadedModel

_RECORD_SPLIT = re.compile(r"[\x1e\x1f]")
_RECORD = re.compile(r"^\[ONNX Layer: (.*)\]$")
_COPY_NODE = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (?P<layer>.+)$")
_FOREIGN = ("{ForeignNode[", "...", "]}")
_MYELIN_SUFFIX = re.compile(r"_myl\d+_\d+$")
_INTERNAL = (
    re.compile(r"^\(Unnamed Layer\* \d+\)"), re.compile(r"^ONNXTRT_"), re.compile(r"^reshape_(before|after)_"),
    re.compile(r"^(transpose_before|unsqueeze_node_after|copied_squeeze_after)_"),
    re.compile(r"_copy_(input|output)$"), re.compile(r"^__my[le]"), re.compile(r"shape_call"),
    re.compile(r"_clone_\d+$"), re.compile(r"^Forced Cast"), re.compile(r"^\[[A-Z_]+\]-\[aten_ops"),
    re.compile(r" copy$"), re.compile(r"^Reformatted (Input|Output) Tensor"),
)
# without a model, parts spelled like tensors or initializers rather than nodes are dropped
_TENSORISH = re.compile(r"(\.(weight|bias|running_mean|running_var)$)|(^onnx::)|(_output_\d+$)|(:\d+$)|(^\d+$)")


def metadata_nodes(metadata: str | None) -> tuple[list[str], list[str]]:
    """(ONNX node names, leftover records that are not `[ONNX Layer: ...]`)."""
    nodes, other = [], []
    for rec in _RECORD_SPLIT.split(metadata or ""):
        rec = rec.strip()
        if not rec:
            continue
        m = _RECORD.match(rec)
        (nodes if m else other).append(m.group(1) if m else rec)
    return nodes, other


def served_layer(name: str) -> str | None:
    """The layer a TensorRT-inserted reformat/copy serves (`Reformatting CopyNode ... to X` -> X)."""
    m = _COPY_NODE.match(name)
    return m.group("layer") if m else None


def split_name(name: str) -> list[str]:
    """The parts of a fused layer name, PWN(...) arguments flattened, in order. Separators inside brackets
    do not split. Linear in the name's length, however deeply PWN(...) nests."""
    close = _brackets(name)
    out: list[str] = []
    todo: list[tuple[bool, int, int]] = [(False, 0, len(name))]  # (is a final part, start, end)
    while todo:
        final, lo, hi = todo.pop()
        if final:
            out.append(name[lo:hi])
            continue
        pending = []
        for a, b in _split_top(name, lo, hi, (" + ", " || "), close):
            while a < b and name[a].isspace():
                a += 1
            while b > a and name[b - 1].isspace():
                b -= 1
            if b - a > 4 and name.startswith("PWN(", a) and name[b - 1] == ")":
                pending.extend((False, x, y) for x, y in _split_top(name, a + 4, b - 1, (", ",), close))
            elif a < b:
                pending.append((True, a, b))
        todo.extend(reversed(pending))
    return out


def _brackets(text: str) -> dict[int, int]:
    """Position of each opening bracket -> its closing one (any kind closes the innermost; len(text) when
    unclosed); closing brackets with nothing open are ignored."""
    close, stack = {}, []
    for i, ch in enumerate(text):
        if ch in "([{":
            stack.append(i)
        elif ch in ")]}" and stack:
            close[stack.pop()] = i
    close.update((i, len(text)) for i in stack)
    return close


def _split_top(text: str, lo: int, hi: int, seps: Sequence[str], close: dict[int, int]) -> list[tuple[int, int]]:
    parts, start, i = [], lo, lo
    while i < hi:
        if text[i] in "([{":
            i = close[i] + 1
            continue
        sep = next((s for s in seps if text.startswith(s, i, hi)), None)
        if sep:
            parts.append((start, i))
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append((start, hi))
    return parts


def _foreign_ends(part: str) -> list[str] | None:
    """`{ForeignNode[a + b...c]}` -> the parts of both ends, ["a", "b", "c"]; None for other parts."""
    head, dots, tail = _FOREIGN
    if not (part.startswith(head) and part.endswith(tail) and dots in part[len(head):-len(tail)]):
        return None
    first, _, last = part[len(head):-len(tail)].partition(dots)
    return split_name(first) + split_name(last)


def is_internal(part: str) -> bool:
    return any(p.search(part) for p in _INTERNAL)


class NodeIndex:
    """A model's node names in topological order, with the '.'->'_' spelling Myelin uses, and the first
    node that reads each initializer and graph input."""

    def __init__(self, model: LoadedModel):
        self.order = [layer.name for layer in model.layers]
        self.position = {n: i for i, n in enumerate(self.order)}
        self.underscored: dict[str, str] = {}
        for n in self.order:
            self.underscored.setdefault(n.replace(".", "_"), n)
        sources = model.initializers | {spec.name for spec in model.inputs}
        self.first_reader: dict[str, str] = {}
        for layer in model.layers:
            for tensor in layer.inputs:
                if tensor in sources:
                    self.first_reader.setdefault(tensor, layer.name)

    def node(self, name: str) -> str | None:
        """The node named `name`, exactly or in Myelin's spelling."""
        if name in self.position:
            return name
        stripped = _MYELIN_SUFFIX.sub("", name)
        if stripped in self.position:
            return stripped
        return self.underscored.get(stripped.replace(".", "_"))

    def resolve(self, part: str) -> str | None:
        """A part of a layer name -> a node, by the module's rule (node, then tensor read, then Myelin spelling)."""
        if part in self.position:
            return part
        return self.first_reader.get(part) or self.node(part)

    def span(self, nodes: Sequence[str]) -> list[str]:
        """Every node from the earliest to the latest of `nodes`, in topological order."""
        where = [self.position[n] for n in nodes]
        return self.order[min(where):max(where) + 1] if where else []


def _lookup(part: str, index: NodeIndex | None) -> str | None:
    if index is not None:
        return index.resolve(part)
    if is_internal(part) or _TENSORISH.search(part):
        return None
    return _MYELIN_SUFFIX.sub("", part)


def name_nodes(name: str, index: NodeIndex | None) -> list[str]:
    """ONNX nodes named by a layer name (no Metadata), by the module's rule."""
    if served_layer(name) is not None:
        return []
    nodes: list[str] = []
    for part in split_name(name):
        ends = _foreign_ends(part)
        found = [n for n in (_lookup(p, index) for p in (ends if ends is not None else [part])) if n]
        nodes.extend(index.span(found) if index is not None and ends is not None else found)
    return list(dict.fromkeys(nodes))
