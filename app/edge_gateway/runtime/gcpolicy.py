"""The garbage collector's settings for a long-running gateway process.

A frame's path allocates only short-lived objects that reference counting frees, but every tracked
allocation counts toward CPython's generation-0 threshold (700), so at tens of thousands of frames
a second the collector runs hundreds of times a second, and each older-generation pass walks the
whole configuration (one model object per tag, the plan, the schemas). Two standard remedies, both
bounded: after start-up, `gc.freeze()` moves everything alive (imports, config, workers) to the
permanent generation, which collections never walk; and a larger generation-0 threshold makes
collections rarer. Cycles are still collected, only in larger steps: the gateway's own objects do
not form reference cycles on the hot path, so the heap does not grow by it (bench_e2e measures RSS).
"""

from __future__ import annotations

import gc

GEN0 = 50_000  # tracked allocations between young collections (CPython's default: 700)
GEN1 = 20
GEN2 = 100


def settle() -> None:
    """Call once the gateway has started, and after each reload: what the old configuration left
    in the permanent generation goes back to the collector (it may hold cycles), then the new one
    is frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0, GEN1, GEN2)
