"""Files that a reader sees whole or not at all: written to ``<path>.tmp`` in the same folder, flushed to disk, then
renamed over ``path`` (``os.replace``: atomic on POSIX), so a kill at any point leaves the old file or the new one,
and at worst a ``*.tmp`` that the next start removes. The run folder's JSON and YAML files and the checkpoint
manifests are written this way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through ``<path>.tmp`` (fsynced) and a rename: a reader sees the old file or the new
    one. A write that fails (a full disk) removes its ``<path>.tmp`` and raises."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 2) -> None:
    """:func:`write_text` of ``data`` as JSON with sorted keys and a final newline."""
    write_text(path, json.dumps(data, indent=indent, sort_keys=True) + "\n")
