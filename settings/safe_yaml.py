"""Read YAML as an attacker might write it: bounded in size, nodes, depth and alias expansion.

A configuration file is small (Fechatter's largest is ~4 KB). Whatever a file or an
environment variable holds, reading it must stay fast and small, so every bound is checked
while the document is composed, before anything is expanded:

* the file is refused above :data:`MAX_FILE_BYTES` before it is parsed;
* bytes must be UTF-8; the first bad byte is reported at its line and column;
* at most :data:`MAX_NODES` nodes (every key, value and list item) counting each alias as
  the whole subtree it stands for, so a "billion laughs" alias bomb stops at the first level
  that grows past the bound instead of expanding into gigabytes;
* at most :data:`MAX_ALIASES` aliases and :data:`MAX_DEPTH` levels of nesting (the composer
  recurses; a deeply nested file would otherwise end in a RecursionError);
* a key written twice in one mapping is refused with both lines (YAML says keys are unique;
  PyYAML silently keeps the last);
* only plain scalar keys; an alias that refers to its own ancestor (a cycle) is refused.

Every refusal is a :class:`BoundError` with a stable code, a place (``file:line:col``) and
a fix, turned into a :class:`settings.problems.Problem` by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

__all__ = ["MAX_ALIASES", "MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "BoundError", "BoundedLoader",
           "compose_bounded", "decode_utf8", "scalar_value"]

#: Largest configuration file read, in bytes (a full notify.yml is a few KB).
MAX_FILE_BYTES: Final = 1024 * 1024
#: Most nodes in one document, counting an alias as the size of what it refers to.
MAX_NODES: Final = 10_000
#: Most aliases (``*name``) in one document.
MAX_ALIASES: Final = 100
#: Deepest nesting of mappings and lists.
MAX_DEPTH: Final = 64


@dataclass(frozen=True)
class BoundError(Exception):
    """A document refused before it was built: ``code``, where (``line``/``column`` 1-based), why, fix."""

    code: str
    message: str
    line: int | None = None
    column: int | None = None
    fix: str | None = None

    def place(self, name: str) -> str:
        """``name:line:col``, or just ``name`` when there is no position."""
        if self.line is None:
            return name
        return f"{name}:{self.line}:{self.column or 1}"

    def __str__(self) -> str:
        return self.message


def _at(node_or_event: Any) -> tuple[int, int]:
    mark = node_or_event.start_mark
    return mark.line + 1, mark.column + 1


def _fast_base() -> type[yaml.SafeLoader]:
    """libyaml's C parser feeding PyYAML's Python composer (so the counting below still runs).

    The pure-Python scanner reads ~200 KB/s on a busy core: a file at the size bound would take
    seconds. libyaml scans it in a fraction of that; without libyaml the Python SafeLoader is used.
    """
    try:
        from yaml._yaml import CParser
    except ImportError:
        return yaml.SafeLoader

    class _CBase(Composer, CParser, SafeConstructor, Resolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    return _CBase  # type: ignore[return-value]


class BoundedLoader(_fast_base()):  # type: ignore[misc]
    """A safe loader whose composer counts, measures and refuses while it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.nodes = 0
        self.aliases = 0
        self.depth = 0
        # Expanded size of each finished node, by id: an alias adds its target's size.
        self.sizes: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            return self._alias()
        if not self.check_event(ScalarEvent, SequenceStartEvent, MappingStartEvent):
            return Composer.compose_node(self, parent, index)
        self._count(self.peek_event())
        self.depth += 1
        try:
            node = Composer.compose_node(self, parent, index)
        finally:
            self.depth -= 1
        if node is not None:
            self._measure(node)
        return node

    def _count(self, event: Any) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise BoundError("too_many_nodes", f"more than {MAX_NODES} keys, values and list items",
                             *_at(event), fix="a notify.yml needs a few hundred at most; is this the right file?")
        if self.depth >= MAX_DEPTH:
            raise BoundError("too_deep", f"nested more than {MAX_DEPTH} levels deep", *_at(event),
                             fix="flatten the structure")

    def _alias(self) -> Node | None:
        event = self.peek_event()
        self.aliases += 1
        if self.aliases > MAX_ALIASES:
            raise BoundError("too_many_aliases", f"more than {MAX_ALIASES} aliases (*name)", *_at(event),
                             fix="write the values out instead of referring to anchors")
        if event.anchor in self.anchors and id(self.anchors[event.anchor]) not in self.sizes:
            raise BoundError("recursive_alias", f"alias *{event.anchor} refers to a node that contains it",
                             *_at(event), fix="an anchor cannot be used inside itself")
        node = Composer.compose_node(self, None, 0)  # an undefined alias raises ComposerError
        self._grow(self.sizes.get(id(node), 1), event)
        return node

    def _grow(self, by: int, event: Any) -> None:
        # The alias stands for a whole subtree: counted as that many nodes, so expansion is bounded.
        self.nodes += by
        if self.nodes > MAX_NODES:
            raise BoundError("alias_expansion", f"aliases expand to more than {MAX_NODES} nodes "
                             "(an alias bomb?)", *_at(event),
                             fix="write the values out instead of nesting anchors")

    def _measure(self, node: Node) -> None:
        if isinstance(node, MappingNode):
            self._refuse_bad_keys(node)
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, SequenceNode):
            children = list(node.value)
        else:
            children = []
        size = 1 + sum(self.sizes.get(id(child), 1) for child in children)
        if size > MAX_NODES:
            raise BoundError("alias_expansion", f"this value expands to more than {MAX_NODES} nodes "
                             "(an alias bomb?)", *_at(node), fix="write the values out instead of nesting anchors")
        self.sizes[id(node)] = size

    def _refuse_bad_keys(self, node: MappingNode) -> None:
        seen: dict[str, Node] = {}
        for key_node, _value in node.value:
            if not isinstance(key_node, ScalarNode):
                raise BoundError("complex_key", "a key must be a plain name, not a list or mapping",
                                 *_at(key_node), fix="write key: value")
            key = str(key_node.value)
            first = seen.get(key)
            if first is not None:
                line, col = _at(first)
                raise BoundError("duplicate_key", f"key {key!r} is written twice in this mapping, at line "
                                 f"{line} and line {_at(key_node)[0]}; YAML keys are unique (PyYAML would "
                                 "silently keep the last)", *_at(key_node),
                                 fix=f"keep one of them (line {line}:{col} or {_at(key_node)[0]})")
            seen[key] = key_node


def compose_bounded(text: str) -> Node | None:
    """The document's node graph, every bound checked; raises BoundError or yaml.YAMLError."""
    loader = BoundedLoader(text)
    try:
        node: Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


def scalar_value(node: ScalarNode) -> Any:
    """A scalar as YAML types it (int, float, bool, null, timestamp, string)."""
    return SafeConstructor().construct_object(node)


def decode_utf8(data: bytes) -> str:
    """``data`` as text; raises BoundError at the line and column of the first byte that is not UTF-8."""
    bom = b"\xef\xbb\xbf"
    skip = len(bom) if data.startswith(bom) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line_start = data.rfind(b"\n", 0, offset) + 1
        line = data.count(b"\n", 0, offset) + 1
        column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
        raise BoundError("not_utf8", f"byte 0x{data[offset]:02x} at offset {offset} is not UTF-8 "
                         f"({exc.reason})", line, column,
                         fix="save the file as UTF-8 (iconv -f LATIN1 -t UTF-8, or the editor's encoding menu)",
                         ) from None
