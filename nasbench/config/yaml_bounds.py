"""`yaml.safe_load` with bounds, so a hostile or careless config fails in one line before work.

`safe_load` alone is safe from code execution but not from cost: a 7-level alias bomb in a
free-form section took minutes and gigabytes once expanded into the manifest, deep nesting ends
in a RecursionError, and an integer past Python's int-string limit in a ValueError traceback.
Here the document's size is checked before parsing, its nesting while it is composed (before the
parser's recursion can overflow), and the size it would have with every alias expanded right
after composition (aliases share one node until something copies them, so composing is cheap).
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_BYTES = 1 << 20
"""Largest document (1 MiB): configs are a few KiB; this keeps parsing under a second."""
MAX_DEPTH = 32
"""Deepest nesting of sequences and mappings, aliases expanded (configs use under 8)."""
MAX_NODES = 100_000
"""Most nodes (scalars, sequences, mappings) with every alias expanded."""


class YamlLimitError(yaml.MarkedYAMLError):
    """A document beyond one of the bounds above (a `YAMLError`, with the place when known)."""


class BoundedSafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that enforces MAX_DEPTH while composing and MAX_NODES after, and turns
    an integer too long for `int()` into a YamlLimitError."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(problem=f"nested deeper than {MAX_DEPTH} levels",
                                     problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Node:
        root = super().compose_document()
        check_expanded(root)
        return root

    def construct_yaml_int(self, node: Node) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            limit = sys.get_int_max_str_digits()
            raise YamlLimitError(problem=f"integer longer than {limit} digits",
                                 problem_mark=node.start_mark) from None


BoundedSafeLoader.add_constructor("tag:yaml.org,2002:int", BoundedSafeLoader.construct_yaml_int)


def check_expanded(root: Node) -> None:
    """Raise YamlLimitError if `root`, with aliases expanded, is deeper than MAX_DEPTH, holds
    more than MAX_NODES nodes, or refers to itself. Each shared node is sized once, so a bomb
    is measured in time linear in the document, not in its expansion."""
    memo: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    on_path: set[int] = set()

    def visit(node: Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if depth > MAX_DEPTH:
            raise YamlLimitError(problem=f"nested deeper than {MAX_DEPTH} levels once its aliases "
                                 "are expanded", problem_mark=node.start_mark)
        if key in on_path:
            raise YamlLimitError(problem="an alias refers to the node that contains it",
                                 problem_mark=node.start_mark)
        if key not in memo:
            on_path.add(key)
            size, height = 1, 0
            for child in _children(node):
                child_size, child_height = visit(child, depth + 1)
                size += child_size
                height = max(height, child_height + 1)
                if size > MAX_NODES:
                    raise YamlLimitError(problem=f"expands to more than {MAX_NODES} nodes "
                                         "(an alias bomb?)", problem_mark=node.start_mark)
            on_path.discard(key)
            memo[key] = (size, height)
        size, height = memo[key]
        if depth + height > MAX_DEPTH:
            raise YamlLimitError(problem=f"nested deeper than {MAX_DEPTH} levels once its aliases "
                                 "are expanded", problem_mark=node.start_mark)
        return size, height

    visit(root, 1)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def load_bounded(text: str) -> Any:
    """`yaml.safe_load(text)` within MAX_BYTES, MAX_DEPTH and MAX_NODES; raises `YAMLError`
    (YamlLimitError for a bound) or ValueError (e.g. an impossible date)."""
    size = len(text.encode("utf-8", errors="surrogateescape"))
    if size > MAX_BYTES:
        raise YamlLimitError(problem=f"document is {size} bytes, more than the {MAX_BYTES} allowed")
    loader = BoundedSafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
