"""Pure helpers of engine/image_estimates.py."""

from __future__ import annotations

import numpy as np


def test_running_median_equals_the_per_index_median() -> None:
    """The vectorised running median is the plain per-index window median, ends cut."""
    from fringelive.engine.image_estimates import _running_median

    rng = np.random.default_rng(5)
    for n in (7, 64, 257):
        x = rng.random(n)
        for lo, hi, extra in ((0, n, 0), (2, n - 1, 2), (n // 2, n, 3)):
            want = [np.median(x[max(0, i - (max(3, int(0.15 * i)) + extra)): i + max(3, int(0.15 * i)) + extra + 1])
                    for i in range(lo, hi)]
            np.testing.assert_array_equal(_running_median(x, lo, hi, extra), want)
