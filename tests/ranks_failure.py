"""Run by ``tests/test_ranks.py`` under ``torchrun --nproc_per_node 2``: rank 1 fails inside an ``agreed`` block
while rank 0 waits in a ``gather`` of the same block; each rank writes what it raised to ``$APO_TEST_RESULTS``, and
ends through ``ranks.leave`` (an ``atexit`` handler writes ``rank<r>.atexit`` on the way out)."""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path

import torch.distributed as dist

from apo.cli import ranks


def main() -> None:
    dist.init_process_group("gloo")
    atexit.register(Path(os.environ["APO_TEST_RESULTS"], f"rank{ranks.rank()}.atexit").write_text, "ran")
    outcome = {}
    try:
        with ranks.agreed(lambda e: 7):
            if ranks.rank() == 1:
                raise RuntimeError("rank 1 failed first")
            ranks.gather("data of rank 0")  # rank 1 never reaches this gather
        outcome = {"raised": None}
    except ranks.PeerFailed as e:
        outcome = {"raised": "PeerFailed", "code": e.code, "speaks": ranks.speaks(e)}
    except RuntimeError as e:
        outcome = {"raised": "RuntimeError", "message": str(e), "speaks": ranks.speaks(e)}
    # the two ranks are in step again: a plain exchange after the failure pairs up
    outcome["after"] = ranks.gather(ranks.rank())
    with open(os.path.join(os.environ["APO_TEST_RESULTS"], f"rank{ranks.rank()}.json"), "w") as f:
        json.dump(outcome, f)
    ranks.leave(0)


if __name__ == "__main__":
    main()
