"""YAML 1.2 for config files and ``key=value`` overrides: :class:`YamlLoader` reads, :class:`YamlDumper` writes.

Values are taken as written. YAML 1.1 (PyYAML's ``SafeLoader``) would read ``1e-5`` as a string (its float rule needs
a dot), ``010`` as 8 (octal), ``1:30`` as 90 (base 60), ``off``/``no`` as ``False``; here they are the float
``1e-05``, the int 10, and the strings ``'1:30'``, ``'off'``, ``'no'``. What the dumper writes reads back the same with
this loader and with a YAML 1.1 reader.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class YamlError(ValueError):
    """Text that is not YAML; the message names its source, line and column."""


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the YAML 1.2 core schema's implicit types in place of YAML 1.1's: a plain scalar is
    ``null`` (``null``, ``Null``, ``NULL``, ``~``, empty), a boolean (``true``/``false`` in three casings only), an int
    (``[-+]?[0-9]+`` in base 10, ``0o17``, ``0x1F``), a float (``1e-5``, ``.5``, ``-1.5E3``, ``.inf``, ``.nan``) or
    a string; ``_`` may separate digits (``1_000``), as in YAML 1.1. So ``010`` is 10 (not octal 8), ``1:30`` and
    ``2024-01-01`` are strings (not 90 and a date), and ``no``, ``off``, ``y`` are strings (not booleans)."""


_CORE_SCHEMA = (  # (tag, regex, first characters), in the order they are tried: an int before a float
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
)
# Keep SafeLoader's resolvers that are not scalar types (the merge key `<<`, ...); replace the YAML 1.1 types.
YamlLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag.rsplit(":", 1)[1] not in ("bool", "null", "int", "float", "timestamp")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _rx, _first in _CORE_SCHEMA:
    YamlLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_rx), _first)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A YAML 1.2 core int: base 10 (a leading zero is not octal), ``0o`` octal, ``0x`` hexadecimal."""
    text = loader.construct_scalar(node).replace("_", "")
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


YamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class YamlDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes every string which YAML 1.1 *or* the 1.2 core schema would read as another
    type (``'no'``, ``'1e-5'``, ``'0o17'``), so what it writes reads back the same with :class:`YamlLoader` and with
    a YAML 1.1 reader."""


YamlDumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
for _tag, _rx, _first in _CORE_SCHEMA:
    YamlDumper.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_rx), _first)


def yaml_dump(data: Any) -> str:
    """``data`` as block YAML, keys sorted, with :class:`YamlDumper` (reads back the same with :func:`yaml_load`)."""
    return yaml.dump(data, Dumper=YamlDumper, sort_keys=True, allow_unicode=True)


def yaml_load(text: str, source: str):
    """``text`` parsed with :class:`YamlLoader`; a syntax error is a one-line :class:`YamlError` naming ``source``,
    the line and the column (1-based)."""
    try:
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise YamlError(f"{source}{where}: malformed YAML: {what}") from None
