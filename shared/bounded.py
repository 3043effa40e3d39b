"""Bounded readers for untrusted YAML and JSON text: one set of limits for REST, NATS and the CLI.

Every limit is checked while reading, before anything is expanded or copied:

- ``max_bytes``: the text's size in UTF-8;
- ``max_depth``: nesting of maps and lists, aliases included (an alias counts at the depth it expands to);
- ``max_aliases``: YAML aliases (``*name``) in the whole text;
- ``max_nodes``: values in the whole text *after* alias expansion, so ten anchors of ten aliases (a
  "billion laughs" bomb) is refused after a few hundred nodes instead of being expanded;
- ``max_documents``: YAML documents (and JSON array items) in one text.

Keys must be unique in a map (a duplicate is an error naming the key and its path, as a Kubernetes
API server's strict decoding does), and every value must be what JSON can hold: maps with string
keys, lists, strings, booleans, null, integers that fit in 64 bits and finite floats. YAML
timestamps stay strings (kubectl converts YAML to JSON first). A problem raises :class:`InputError`
carrying the document index, the path (as parts) and the line when known.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

__all__ = ["Limits", "DEFAULT_LIMITS", "InputError", "load_yaml_documents", "load_json", "load_documents",
           "check_size", "read_text_file", "utf8_size", "INT64_MIN", "INT64_MAX"]

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
Part = str | int


@dataclass(frozen=True, slots=True)
class Limits:
    """How much untrusted text may hold; see the module docstring."""

    max_bytes: int = 1 << 20
    max_depth: int = 64
    max_aliases: int = 256
    max_nodes: int = 200_000
    max_documents: int = 5_000


DEFAULT_LIMITS = Limits()


class InputError(ValueError):
    """Text that is malformed or over a limit: ``message`` plus where (document, path parts, line)."""

    def __init__(self, message: str, *, document: int = 0, path: tuple[Part, ...] = (), line: int | None = None,
                 too_large: bool = False) -> None:
        self.message = message
        self.document = document
        self.path = path
        self.line = line
        self.too_large = too_large
        super().__init__(message)


def utf8_size(text: str) -> int:
    """The size of ``text`` in UTF-8 bytes (lone surrogates count as three)."""
    return len(text.encode("utf-8", errors="surrogatepass"))


def check_size(text: str | bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """InputError (``too_large``) when ``text`` is over ``limits.max_bytes``."""
    size = len(text) if isinstance(text, bytes) else (len(text) if len(text) * 4 <= limits.max_bytes
                                                      else utf8_size(text))
    if size > limits.max_bytes:
        raise InputError(f"the text is {size} bytes: at most {limits.max_bytes} are accepted", too_large=True)


def read_text_file(path: Path, limits: Limits = DEFAULT_LIMITS) -> str:
    """A UTF-8 file's text, reading no more than the limit allows; InputError when too large or not UTF-8."""
    with open(path, "rb") as fh:
        data = fh.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise InputError(f"the file is larger than {limits.max_bytes} bytes, the most accepted", too_large=True)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8: byte {exc.start} cannot be decoded") from exc


# ---------------------------------------------------------------------------------------------- YAML

try:  # libyaml's parser when PyYAML was built with it (Debian's is)
    from yaml._yaml import CParser as _BASE_PARSER
except ImportError:  # pragma: no cover - pure-Python PyYAML
    class _BASE_PARSER(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        """The pure-Python reader, scanner and parser, built from the text like CParser."""

        def __init__(self, text: str) -> None:
            yaml.reader.Reader.__init__(self, text)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_INT_DIGITS = 200  # an integer literal longer than this is refused before Python parses it (4300 would raise)


class _Sizes:
    """Per-node expanded size and height, kept beside the node graph (anchored nodes are shared)."""

    __slots__ = ("size", "height")

    def __init__(self) -> None:
        self.size: dict[int, int] = {}
        self.height: dict[int, int] = {}


class _BoundedComposer(Composer):
    """PyYAML's composer with the limits checked as each node is composed (aliases by their expansion)."""

    if TYPE_CHECKING:  # given by the parser and resolver this is mixed with
        def check_event(self, *choices: Any) -> bool: ...
        def peek_event(self) -> Any: ...
        def get_event(self) -> Any: ...
        def resolve(self, kind: Any, value: Any, implicit: Any) -> str: ...
        def descend_resolver(self, parent: Any, index: Any) -> None: ...
        def ascend_resolver(self) -> None: ...

    def _setup(self, limits: Limits) -> None:
        self.limits = limits
        self.aliases = 0
        self.nodes = 0
        self.document_index = 0
        self.path: list[Part] = []
        self.open_anchors: set[str] = set()
        self.sizes = _Sizes()

    def _fail(self, message: str, node_or_event: Any = None, path: tuple[Part, ...] | None = None) -> InputError:
        mark = getattr(node_or_event, "start_mark", None)
        return InputError(message, document=self.document_index,
                          path=tuple(self.path) if path is None else path,
                          line=mark.line + 1 if mark is not None else None)

    def _count(self, amount: int, height: int, where: Any) -> None:
        self.nodes += amount
        if self.nodes > self.limits.max_nodes:
            raise self._fail(f"too many values (more than {self.limits.max_nodes}, aliases expanded)", where)
        if len(self.path) + height > self.limits.max_depth:
            raise self._fail(f"nested deeper than {self.limits.max_depth} levels", where)

    def compose_document(self) -> Node | None:
        self.get_event()  # DocumentStart
        node = self.compose_node(None, None)
        self.get_event()  # DocumentEnd
        self.anchors = {}
        self.open_anchors = set()
        self.sizes = _Sizes()
        self.document_index += 1
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.get_event()
            self.aliases += 1
            if self.aliases > self.limits.max_aliases:
                raise self._fail(f"too many aliases (more than {self.limits.max_aliases})", event)
            anchor = event.anchor
            if anchor not in self.anchors:
                raise self._fail(f"alias *{anchor} names no anchor defined before it", event)
            if anchor in self.open_anchors:
                raise self._fail(f"alias *{anchor} is inside its own anchor (a recursive structure)", event)
            node = self.anchors[anchor]
            self._count(self.sizes.size[id(node)], self.sizes.height[id(node)], event)
            return node
        event = self.peek_event()
        anchor = event.anchor
        if anchor is not None and anchor in self.anchors:
            raise self._fail(f"anchor &{anchor} is defined twice", event)
        self.descend_resolver(parent, index)
        if anchor is not None:
            self.open_anchors.add(anchor)
        before = self.nodes
        if self.check_event(ScalarEvent):
            self._count(1, 0, event)
            node = self.compose_scalar_node(anchor)
            if node.tag == _INT and len(node.value) > _INT_DIGITS:
                raise self._fail("integer does not fit in 64 bits", event)
            height = 0
        elif self.check_event(SequenceStartEvent):
            self._count(1, 1, event)
            node = self.compose_sequence_node(anchor)
            height = 1 + max((self.sizes.height[id(n)] for n in node.value), default=0)
        elif self.check_event(MappingStartEvent):
            self._count(1, 1, event)
            node = self.compose_mapping_node(anchor)
            height = 1 + max((self.sizes.height[id(v)] for _k, v in node.value), default=0)
        else:  # pragma: no cover - the parser only yields the events above here
            raise self._fail(f"unexpected YAML event {type(event).__name__}", event)
        if anchor is not None:
            self.open_anchors.discard(anchor)
        self.sizes.size[id(node)] = self.nodes - before
        self.sizes.height[id(node)] = height
        self.ascend_resolver()
        return node

    def compose_sequence_node(self, anchor: Any) -> SequenceNode:
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(SequenceNode, None, start.implicit)
        node = SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        index = 0
        while not self.check_event(yaml.events.SequenceEndEvent):
            self.path.append(index)
            node.value.append(self.compose_node(node, index))
            self.path.pop()
            index += 1
        node.end_mark = self.get_event().end_mark
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(MappingNode, None, start.implicit)
        node = MappingNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        seen: dict[str, int] = {}
        while not self.check_event(yaml.events.MappingEndEvent):
            key = self.compose_node(node, None)
            part: Part = "?"
            if isinstance(key, ScalarNode):
                part = key.value
                if key.tag != _MERGE:
                    ident = key.value if key.tag == _STR else f"\0{key.tag}\0{key.value.lower()}"
                    line = key.start_mark.line + 1
                    if ident in seen:
                        raise self._fail(f"duplicate key {key.value!r} (line {line}; first at line {seen[ident]})",
                                         key, tuple(self.path) + (key.value,))
                    seen[ident] = line
            self.path.append(part)
            value = self.compose_node(node, key)
            self.path.pop()
            node.value.append((key, value))
        node.end_mark = self.get_event().end_mark
        return node


class _YamlReader(_BASE_PARSER, _BoundedComposer, SafeConstructor, Resolver):
    """libyaml's parser (when built) + the bounded composer + the safe constructor, no timestamps."""

    def __init__(self, text: str, limits: Limits) -> None:
        _BASE_PARSER.__init__(self, text)
        _BoundedComposer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._setup(limits)

    # libyaml's parser class brings its own composer methods: use ours.
    check_node = Composer.check_node
    get_node = Composer.get_node
    get_single_node = Composer.get_single_node


_YamlReader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
}


def _yaml_error(exc: yaml.YAMLError, document: int) -> InputError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    return InputError(f"invalid YAML{where}: {problem}", document=document,
                      line=mark.line + 1 if mark is not None else None)


def load_yaml_documents(text: str, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """Every document of a YAML stream (None for an empty one), checked against ``limits``."""
    check_size(text, limits)
    reader = _YamlReader(text, limits)
    docs: list[Any] = []
    try:
        while reader.check_node():
            if len(docs) >= limits.max_documents:
                raise InputError(f"too many documents (more than {limits.max_documents})", document=len(docs))
            node = reader.get_node()
            try:
                raw = reader.construct_document(node)
            except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
                raise InputError(f"a value cannot be read: {exc}", document=len(docs)) from exc
            docs.append(_normalise(raw, len(docs), limits))
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, len(docs)) from exc
    finally:
        reader.dispose()
    return docs


# ---------------------------------------------------------------------------------------------- JSON

_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.DOTALL)


class _Pairs(dict):  # type: ignore[type-arg]
    """A JSON object that remembers the keys it was given more than once."""

    duplicates: list[str]


class _BigInt(str):
    """A JSON integer literal too long to be a 64-bit integer (reported with its path later)."""


def _pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    out = _Pairs()
    dups = []
    for key, value in items:
        if key in out:
            dups.append(key)
        out[key] = value
    out.duplicates = dups
    return out


def _json_int(text: str) -> int | _BigInt:
    return int(text) if len(text) <= _INT_DIGITS else _BigInt(text)


def _json_depth(text: str, limit: int) -> None:
    """InputError naming the path where ``text`` nests deeper than ``limit`` (checked before parsing)."""
    frames: list[list[Any]] = []  # [is_object, index or key, expecting a key]
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            if len(frames) >= limit:
                path = tuple(f[1] for f in frames if f[1] is not None)
                raise InputError(f"nested deeper than {limit} levels", path=path,
                                 line=text.count("\n", 0, match.start()) + 1)
            frames.append([token == "{", None if token == "{" else 0, token == "{"])
        elif token in "]}":
            if frames:
                frames.pop()
        elif not frames:
            continue
        elif token == ",":
            frame = frames[-1]
            if frame[0]:
                frame[2] = True
            elif isinstance(frame[1], int):
                frame[1] += 1
        elif frames[-1][0] and frames[-1][2]:  # a string where an object expects a key
            try:
                frames[-1][1] = json.loads(token)
            except ValueError:
                frames[-1][1] = token[1:-1]
            frames[-1][2] = False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_json(text: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """One JSON value, checked against ``limits`` (depth is measured before parsing)."""
    check_size(text, limits)
    _json_depth(text, limits.max_depth)
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", line=exc.lineno) from exc
    except (ValueError, RecursionError) as exc:  # NaN, Infinity
        raise InputError(f"invalid JSON: {exc}") from exc
    return value


def load_documents(text: str, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """JSON (text starting with ``{`` or ``[``: one document, or one per item of a top-level list) or YAML."""
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        return load_yaml_documents(text, limits)
    value = load_json(text, limits)
    docs = value if isinstance(value, list) else [value]
    if len(docs) > limits.max_documents:
        raise InputError(f"too many documents (more than {limits.max_documents})", document=limits.max_documents)
    return [_normalise(doc, i, limits) for i, doc in enumerate(docs)]


# ----------------------------------------------------------------------------------- normalisation


_SURROGATE = re.compile("[\ud800-\udfff]")


def _key(key: Any) -> str | None:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, (int, float)):
        return str(key)
    return None


def _scalar_problem(v: Any) -> str | None:
    """Why a scalar cannot be stored, or None when it can (JSON's scalars, 64-bit integers)."""
    if isinstance(v, _BigInt):
        return "integer does not fit in 64 bits"
    if isinstance(v, str):
        return "not valid Unicode: a lone surrogate (\\ud800-\\udfff)" if _SURROGATE.search(v) else None
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, int):
        return None if INT64_MIN <= v <= INT64_MAX else "integer does not fit in 64 bits"
    if isinstance(v, float):
        return None if math.isfinite(v) else f"{v} is not a finite number"
    return (f"a {type(v).__name__} value cannot be stored (only maps, lists, strings, numbers, booleans "
            "and null)")


def _normalise(value: Any, document: int, limits: Limits) -> Any:
    """A plain copy of ``value``: JSON types only, string keys, no duplicates; aliases become copies.

    The composer (or the JSON depth scan) has bounded depth and expanded size already, so this
    recursion and the copies it makes are bounded too.
    """
    def fail(message: str, path: tuple[Part, ...]) -> InputError:
        return InputError(message, document=document, path=path)

    def mapping(v: dict[Any, Any], path: tuple[Part, ...]) -> dict[str, Any]:
        for dup in getattr(v, "duplicates", ()):
            raise fail(f"duplicate key {dup!r}", path + (dup,))
        out: dict[str, Any] = {}
        for k, x in v.items():
            key = _key(k)
            if key is None:
                raise fail(f"a key must be a string, got {type(k).__name__}", path)
            if _SURROGATE.search(key):
                raise fail("a key is not valid Unicode: a lone surrogate (\\ud800-\\udfff)", path)
            if key in out:
                raise fail(f"duplicate key {key!r}", path + (key,))
            out[key] = go(x, path + (key,))
        return out

    def go(v: Any, path: tuple[Part, ...]) -> Any:
        if isinstance(v, list):
            return [go(x, path + (i,)) for i, x in enumerate(v)]
        if isinstance(v, dict):
            return mapping(v, path)
        problem = _scalar_problem(v)
        if problem:
            raise fail(problem, path)
        return v

    return go(value, ())
