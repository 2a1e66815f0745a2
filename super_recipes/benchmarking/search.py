"""The maximal-batch search: doubling, then bisection, against a ``fits(batch) -> bool`` predicate.

Kept free of torch so it can be tested exactly with an injected predicate; the benchmark's predicates (a CUDA
out-of-memory probe, a CPU memory cap) live in :mod:`super_recipes.benchmarking.measure`.
"""

from __future__ import annotations

from collections.abc import Callable

from super_recipes.errors import RecipeError


def find_max_batch(fits: Callable[[int], bool], limit: int, start: int = 1) -> int:
    """The largest batch in ``[start, limit]`` for which ``fits`` is true, or 0 when ``fits(start)`` is false.

    ``fits`` is assumed monotone (a batch that fits means every smaller one fits). Batches double from
    ``start`` (the last doubling is clipped to ``limit``) until one does not fit, then the gap between the last
    batch that fitted and the first that did not is bisected. ``fits`` is never called above ``limit`` nor above
    a batch that failed, and about ``2 * log2(limit / start)`` times at most.
    """
    if start < 1 or limit < start:
        raise RecipeError(f"Batch search needs 1 <= start <= limit, got start={start}, limit={limit}.")
    good, bad = 0, None  # largest batch known to fit, smallest known not to
    batch = start
    while True:
        if fits(batch):
            good = batch
            if batch == limit:
                return good
            batch = min(2 * batch, limit)
        else:
            bad = batch
            break
    # Bisection over (good, bad): with good == 0 the batches below start are not tried (start is the minimum).
    low = max(good, start - 1)
    while bad - low > 1:
        middle = (low + bad) // 2
        if fits(middle):
            good = low = middle
        else:
            bad = middle
    return good


def measure_batch(max_batch: int, fraction: float = 0.9) -> int:
    """The batch the speeds are measured at: ``fraction`` (90% in the ImageNet-21K-P table) of the maximal one.

    Rounded to the nearest integer (320 -> 288) and at least 2 when the maximal batch allows, since a training
    step at batch 1 breaks BatchNorm wherever a feature map is 1x1.
    """
    if max_batch <= 1:
        return max_batch
    return max(2, round(fraction * max_batch))
