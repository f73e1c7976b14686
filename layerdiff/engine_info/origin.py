"""Which ONNX nodes an engine layer came from (docs/trt-engine-info.md sections 6 and 7).

`Metadata` records (`[ONNX Layer: name]` joined by U+001E or U+001F) are authoritative. Without them the
layer name is parsed: `A + B` (vertical fusion), `A || B` (horizontal merge), `PWN(a, PWN(b))` (pointwise
fusion), `{ForeignNode[first...last]}` (a Myelin region, expanded through the model's topology),
Myelin kernel suffixes (`<name with . as _>_myl<g>_<i>`), and TensorRT's own names, which have no ONNX
node. With a model, only parts that name one of its nodes are kept; without one, every part that is not
a TensorRT-internal name is kept as a candidate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_RECORD_SPLIT = re.compile(r"[\x1e\x1f]")
_RECORD = re.compile(r"^\[ONNX Layer: (.*)\]$")
_COPY_NODE = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (?P<layer>.+)$")
_FOREIGN = re.compile(r"^\{ForeignNode\[(?P<first>.*?)\.\.\.(?P<last>.*)\]\}$")
_MYELIN_SUFFIX = re.compile(r"_myl\d+_\d+$")
_INTERNAL = (
    re.compile(r"^\(Unnamed Layer\* \d+\)"), re.compile(r"^ONNXTRT_"), re.compile(r"^reshape_(before|after)_"),
    re.compile(r"_copy_(input|output)$"), re.compile(r"^__my[le]"), re.compile(r"shape_call"),
    re.compile(r"_clone_\d+$"), re.compile(r"^Forced Cast"), re.compile(r"^\[[A-Z_]+\]-\[aten_ops"),
    re.compile(r" copy$"), re.compile(r"^Reformatted (Input|Output) Tensor"),
)


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
    """The parts of a fused layer name, PWN(...) arguments flattened, in order."""
    out: list[str] = []
    for part in _split_top(name, (" + ", " || ")):
        part = part.strip()
        if part.startswith("PWN(") and part.endswith(")"):
            for arg in _split_top(part[4:-1], (", ",)):
                out.extend(split_name(arg))
        elif part:
            out.append(part)
    return out


def _split_top(text: str, seps: Sequence[str]) -> list[str]:
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0:
            sep = next((s for s in seps if text.startswith(s, i)), None)
            if sep:
                parts.append(text[start:i])
                i += len(sep)
                start = i
                continue
        i += 1
    parts.append(text[start:])
    return parts


# without a model, parts spelled like tensors or initializers rather than nodes are dropped
_TENSORISH = re.compile(r"(\.(weight|bias|running_mean|running_var)$)|(^onnx::)|(_output_\d+$)|(:\d+$)")


def is_internal(part: str) -> bool:
    return any(p.search(part) for p in _INTERNAL)


class NodeIndex:
    """A model's node names in topological order, with the '.'->'_' spelling Myelin uses."""

    def __init__(self, names: Sequence[str]):
        self.order = list(names)
        self.position = {n: i for i, n in enumerate(self.order)}
        self.underscored: dict[str, str] = {}
        for n in self.order:
            self.underscored.setdefault(n.replace(".", "_"), n)

    def resolve(self, part: str) -> str | None:
        if part in self.position:
            return part
        stripped = _MYELIN_SUFFIX.sub("", part)
        if stripped in self.position:
            return stripped
        return self.underscored.get(stripped.replace(".", "_"))

    def between(self, first: str, last: str) -> list[str]:
        a, b = self.resolve(first), self.resolve(last)
        if a is None or b is None:
            return []
        i, j = sorted((self.position[a], self.position[b]))
        return self.order[i:j + 1]


def name_nodes(name: str, index: NodeIndex | None) -> list[str]:
    """ONNX nodes named by a layer name (no Metadata): resolved against the model when there is one."""
    if served_layer(name) is not None:
        return []
    nodes: list[str] = []
    for part in split_name(name):
        m = _FOREIGN.match(part)
        if m:
            ends = split_name(m.group("first")) + split_name(m.group("last"))
            if index is not None:
                known = [r for r in (index.resolve(p) for p in ends) if r is not None]
                if known:
                    nodes.extend(index.between(min(known, key=index.position.get),
                                               max(known, key=index.position.get)))
            else:
                nodes.extend(p for p in ends if not is_internal(p) and not _TENSORISH.search(p))
            continue
        if index is not None:
            resolved = index.resolve(part)
            if resolved is not None:
                nodes.append(resolved)
        elif not is_internal(part) and not _TENSORISH.search(part):
            nodes.append(_MYELIN_SUFFIX.sub("", part))
    return list(dict.fromkeys(nodes))
