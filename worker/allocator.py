"""Keep the C allocator's freed memory for the next film (glibc ``mallopt``).

Each radiograph Ossa classifies passes through buffers of its own size: a 3000 x 2500 film's
pixel data (15 MB as pydicom reads it), its reduced rendering, the capture's pixels and
bytes. glibc serves an allocation above its mmap threshold (128 KiB to start with) with
fresh pages from the kernel and gives them back when it is freed, so every film faults in
new, zeroed pages; and what it frees at the top of a heap beyond its trim threshold goes back
too. On a virtual machine a page fault is dear: on the 2-core VM of the benchmarks, faulting
in fresh memory doubled the time to read a 15 MB film (11 ms to 24 ms per image,
``docs/benchmarks.md``).

:func:`keep_freed_memory` raises both thresholds, so that freed buffers stay in the process
and the next film reuses them. The cost is memory: the process keeps, instead of returning,
what it freed, up to :data:`TRIM_THRESHOLD` per heap; its resident size stays near its
peak (measured in ``bench/end_to_end.py``) instead of falling back between batches. It is a
process-wide setting, so only an entry point calls it (``ossa serve``, and the inference
benchmark that times the service's path); elsewhere than on glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys

from worker.config import MIB

logger = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations up to this size come from the heap and are reused once freed: glibc's largest
#: mmap threshold on 64-bit systems (``HEAP_MAX_SIZE / 2``), above a 15 MB film. Larger ones
#: are still mapped and unmapped each time.
MMAP_THRESHOLD = 32 * MIB
#: Free memory at the top of a heap above this size is given back to the kernel: above the
#: buffers of a film or two in flight (the classify stage drops a film's pixel data once it
#: is rendered, so the next film reuses its buffer), low enough that each of the process's
#: heaps keeps little.
TRIM_THRESHOLD = 64 * MIB


def keep_freed_memory() -> bool:
    """Have glibc keep freed buffers for reuse instead of returning them to the kernel.

    Returns
    -------
    bool
        Whether both thresholds were set: False on a C library without ``mallopt`` (musl,
        macOS, Windows), where nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    kept = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    kept = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and kept
    logger.debug("freed memory kept for reuse: %s", kept)
    return kept
