"""worker.allocator: freed film-sized buffers stay in the process for the next film (glibc),
measured by the resident size of a fresh interpreter, since the setting is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

#: Allocates and touches a 15 MB buffer (a 3000 x 2500 16-bit film), frees it, and reports
#: the resident size (KiB) before, while held and after, from /proc/self/statm.
_PROBE = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from worker.allocator import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page_kib
    before = rss()
    film = np.ones((3000, 2500), dtype=np.uint16)
    held = rss()
    del film
    print(json.dumps({"kept": kept, "before": before, "held": held, "after": rss()}))
    """
)


def _probe(mode: str) -> dict[str, int | bool | None]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True, timeout=60)
    return dict(json.loads(out.stdout))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_film_buffer_is_kept_for_reuse() -> None:
    default = _probe("default")
    kept = _probe("keep")
    film_kib = 3000 * 2500 * 2 // 1024
    assert kept["kept"] is True
    for run in (default, kept):  # the film's pages were touched and resident
        assert int(run["held"]) - int(run["before"]) >= 0.9 * film_kib, run
    # By default glibc maps a buffer that large on its own and unmaps it when freed...
    assert int(default["held"]) - int(default["after"]) >= 0.9 * film_kib, default
    # ...kept, its pages stay in the process, for the next film to reuse.
    assert int(kept["held"]) - int(kept["after"]) < 0.1 * film_kib, kept
