"""The heap of a long-running gateway: the garbage collector's settings and the pages a load frees.

Collector. A frame's path allocates only short-lived objects that reference counting frees, but every
tracked allocation counts toward CPython's generation-0 threshold (700), so at tens of thousands of
frames a second the collector runs hundreds of times a second, and each older-generation pass walks
the whole configuration (one model object per tag, the plan, the schemas). Two standard remedies,
both bounded: once started (and after each reload) `gc.freeze()` moves everything alive (imports,
configuration, workers) to the permanent generation, which collections never walk, and a larger
generation-0 threshold makes collections rarer. Cycles are still collected, only in larger steps; a
reload first unfreezes, so what an old configuration left behind is collected then.

Pages. The YAML node trees are built in the loader's child (config/isolated.py), so what is left of a
load here is the pickle the child sent and the unpickling's transients; glibc keeps freed pages for
reuse, and malloc_trim(0) returns the free ones (1.3 MiB at 10 000 tags). A no-op where the C library
has no malloc_trim (musl) or off Linux.
"""

from __future__ import annotations

import gc
import sys

GEN0 = 50_000  # tracked allocations between young collections (CPython's default: 700)
GEN1 = 20
GEN2 = 100


def settle() -> None:
    """After start and after each reload: collect what the old configuration left (it may hold
    cycles), freeze what is alive, raise the young threshold, and return the free pages."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0, GEN1, GEN2)
    release_free_memory()


def release_free_memory() -> bool:
    """malloc_trim(0); True when the C library returned memory to the kernel."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only here: the gateway needs no other foreign call at start

    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False
