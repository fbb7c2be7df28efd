"""bench_scale's arithmetic: the memory figure is the least-squares slope of the kernel's RSS
over swapped pages, which one swing at either end does not move as it moves a difference."""
from __future__ import annotations

from host_tools.bench_scale import slope


def test_slope_of_a_line_is_its_rate() -> None:
    points = [(x, 1_000_000 + 53 * x) for x in range(0, 30_720, 512)]
    assert slope(points) == 53.0


def test_slope_weighs_one_swing_at_an_end_less_than_a_difference() -> None:
    points = [(x, 1_000_000 + 53 * x) for x in range(0, 30_720, 512)]
    x_end, y_end = points[-1]
    points[-1] = (x_end, y_end + 300_000)              # the allocator kept 300 KB more once
    difference = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
    assert difference > 62                             # a two-reading figure: ~63 B per page
    assert 53 < slope(points) < 56                     # the slope over 60 readings: ~54.5


def test_slope_without_two_distinct_x_is_zero() -> None:
    assert slope([]) == 0.0
    assert slope([(5, 1), (5, 9)]) == 0.0
