"""Write docs/reliability.md: every bad-input case of tests/reliability_cases.py run, with the line it printed, and
the fault classes with their lines. Usage: python scripts/reliability_table.py [--check]"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from reliability_cases import CASES, render, run_case  # noqa: E402


def generate() -> str:
    """The text of ``docs/reliability.md``: every case run in a fresh folder, its stderr line in the table."""
    messages = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            code, lines = run_case(case, Path(tmp) / str(i))
            if case.pending and code == 0:
                print(f"case {i} ({case.cls}) left out: pending {case.pending}", file=sys.stderr)
                messages.append(None)
                continue
            if code != case.code or len(lines) != 1 or case.expect not in lines[0]:
                raise SystemExit(f"case {i} ({case.cls}): exit {code}, stderr {lines}")
            messages.append(lines[0])
    return render(messages)


if __name__ == "__main__":
    text = generate()
    doc = ROOT / "docs" / "reliability.md"
    if "--check" in sys.argv[1:]:
        sys.exit(0 if doc.read_text() == text else "docs/reliability.md is stale")
    doc.write_text(text)
    print(f"wrote {doc} ({len(text.splitlines())} lines)")
