"""Reading a config file: safe YAML, the --set overrides, conversion to the typed config, validation.

`load_config(path, overrides)` reads the YAML with a safe loader that refuses
duplicate keys and alias bombs, applies the `--set dotted.key=value`
overrides (values parsed as YAML), converts every value to its field's type
and validates ranges. Any problem is a `UserError` naming the file, the dotted
key, the value and what is allowed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from regimen.core.config import MAX_YAML_NODES, Config, from_dict
from regimen.core.errors import UserError
from regimen.core.validation import validate

log = logging.getLogger(__name__)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override, type-check and validate a config file.

    Raises:
        UserError: naming the file, the key, the value and what is expected.
    """
    path = Path(path)
    source = str(path)
    if path.is_dir():
        raise UserError(f"{source}: is a folder; expected a YAML config file")
    if not path.is_file():
        raise UserError(f"{source}: config file not found")
    try:
        raw = safe_yaml(path.read_text(), source)
    except UnicodeDecodeError:
        raise UserError(f"{source}: not a text file") from None
    if raw is None:
        log.warning("%s is empty: every key takes its default", source)
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections at the top, got {type(raw).__name__}")
    for override in overrides:
        _apply_override(raw, override)
    config = from_dict(raw, source)
    validate(config, source)
    return config


def safe_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load` that refuses a duplicate key (instead of keeping the last) and a document
    whose aliases expand to more than `MAX_YAML_NODES` nodes (an alias bomb)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{source}: malformed YAML{where}: {problem}") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Count the nodes `root` expands to (aliases counted at every use) and find duplicate keys."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, open_nodes: frozenset) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise UserError(f"{source}: an alias at line {node.start_mark.line + 1} refers to itself")
        inside = open_nodes | {id(node)}
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise UserError(f"{source}: key '{key.value}' appears twice in one section (line "
                                        f"{key.start_mark.line + 1}); keep one")
                    seen.add(key.value)
                total += size(key, inside) + size(value, inside)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, inside) for item in node.value)
        if total > MAX_YAML_NODES:
            raise UserError(f"{source}: the YAML expands to more than {MAX_YAML_NODES} values through its "
                            "aliases (&/*); write the values out")
        sizes[id(node)] = total
        return total

    size(root, frozenset())


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {override!r}: expected dotted.key=value")
    value = safe_yaml(text, f"--set {key}")
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or a section left null (data.forecast): its other keys take defaults
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: {'.'.join(parts[:depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value
