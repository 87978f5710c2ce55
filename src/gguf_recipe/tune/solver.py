"""Choose one option per tensor so that the predicted loss is smallest within byte budgets.

A multiple-choice knapsack, solved the way rate-distortion allocators do it:

1. **Lagrangian relaxation.** For a price ``lam`` per byte, every tensor independently takes the
   option minimising ``cost + lam * bytes``; as ``lam`` falls, each tensor walks up the lower convex
   hull of its (bytes, cost) points. Walking all hulls at once, steepest segment first, traces every
   Lagrangian solution; the walk stops at the first segment that does not fit. That solution is
   optimal for the bytes it uses (no other allocation of that size predicts a lower loss).
2. **Greedy fill.** The bytes left over are spent on the upgrades (any option, hull or not) with the
   best loss saved per byte, while they fit.

Everything is integer bytes and a fixed tie order (slope, then item index), so the result is
deterministic; with a larger budget the Lagrangian part only moves up (monotone).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import GGUFRecipeError

__all__ = ["Allocation", "InfeasibleBudget", "Item", "Option", "lower_hull", "solve"]


@dataclass(frozen=True)
class Option:
    type: str
    bytes: int  # what the tensor takes in the file (aligned)
    cost: float  # predicted loss (lower is better)


@dataclass(frozen=True)
class Item:
    """One tensor to decide; ``options`` in any order (at least one)."""

    name: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Allocation:
    choice: tuple[Option, ...]  # per item, in input order
    bytes: int
    cost: float
    budget: int

    def by_name(self, items: Sequence[Item]) -> dict[str, Option]:
        return {it.name: c for it, c in zip(items, self.choice, strict=True)}


class InfeasibleBudget(GGUFRecipeError, ValueError):
    """The budget is below the smallest allocation (every tensor at its smallest option)."""

    def __init__(self, budget: int, minimum: int) -> None:
        super().__init__(f"budget {budget} bytes is below the smallest possible {minimum} bytes")
        self.budget = budget
        self.minimum = minimum


def lower_hull(options: Sequence[Option]) -> list[Option]:
    """The options on the lower convex hull of (bytes, cost), by increasing bytes and strictly
    decreasing cost: the only ones a Lagrangian price can select."""
    pts = sorted(options, key=lambda o: (o.bytes, o.cost, o.type))
    frontier: list[Option] = []
    for o in pts:  # Pareto: more bytes must buy a strictly lower cost
        if frontier and o.cost >= frontier[-1].cost:
            continue
        if frontier and o.bytes == frontier[-1].bytes:
            frontier[-1] = o
            continue
        frontier.append(o)
    hull: list[Option] = []
    for o in frontier:
        while len(hull) >= 2 and _turns_up(hull[-2], hull[-1], o):
            hull.pop()
        hull.append(o)
    return hull


def _turns_up(a: Option, b: Option, c: Option) -> bool:
    """True when b lies on or above the segment a-c (b is not on the lower hull)."""
    # slope(a,b) >= slope(a,c), cross-multiplied (bytes strictly increase)
    return (b.cost - a.cost) * (c.bytes - a.bytes) >= (c.cost - a.cost) * (b.bytes - a.bytes)


def solve(items: Sequence[Item], budget: int) -> Allocation:
    """The allocation of ``items`` within ``budget`` bytes (see the module docstring)."""
    if any(not it.options for it in items):
        raise ValueError("every item needs at least one option")
    hulls = [lower_hull(it.options) for it in items]
    pos = [0] * len(items)  # index into each hull
    used = sum(h[0].bytes for h in hulls)
    if used > budget:
        raise InfeasibleBudget(budget, used)

    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        h, k = hulls[i], pos[i]
        if k + 1 < len(h):
            a, b = h[k], h[k + 1]
            heapq.heappush(heap, ((b.cost - a.cost) / (b.bytes - a.bytes), i))

    for i in range(len(items)):
        push(i)
    # 1. the Lagrangian walk: steepest hull segment first, stop at the first that does not fit
    while heap:
        _, i = heap[0]
        step = hulls[i][pos[i] + 1].bytes - hulls[i][pos[i]].bytes
        if used + step > budget:
            break
        heapq.heappop(heap)
        used += step
        pos[i] += 1
        push(i)
    choice = [h[k] for h, k in zip(hulls, pos, strict=True)]
    used = _greedy_fill(items, choice, budget, used)
    return Allocation(tuple(choice), used, sum(c.cost for c in choice), budget)


def _greedy_fill(items: Sequence[Item], choice: list[Option], budget: int, used: int) -> int:
    """Spend what is left: repeatedly take the fitting upgrade with the most loss saved per byte
    (a zero-byte upgrade that saves loss first)."""
    while True:
        left = budget - used
        best: tuple[float, int, Option] | None = None
        for i, it in enumerate(items):
            cur = choice[i]
            for o in it.options:
                extra = o.bytes - cur.bytes
                saved = cur.cost - o.cost
                if saved <= 0 or extra > left:
                    continue
                rate = saved / extra if extra > 0 else float("inf")
                key = (-rate, i, o)
                if best is None or (key[0], key[1]) < (best[0], best[1]):
                    best = key
        if best is None:
            return used
        _, i, o = best
        used += o.bytes - choice[i].bytes
        choice[i] = o
