"""Dependency graphs of named nodes: a cycle found, and the start order as levels. Pure, and below
both the loader and the planner, which use them."""

from __future__ import annotations

from collections.abc import Mapping


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a list of names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return stack[stack.index(dep):]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def order_levels(deps: Mapping[str, list[str]]) -> tuple[tuple[str, ...], ...]:
    """Start order as levels: everything in a level can start together."""
    remaining = dict(deps)
    done: set[str] = set()
    levels = []
    while remaining:
        ready = [n for n, d in remaining.items() if all(x in done for x in d)]
        if not ready:
            raise ValueError("dependency cycle: " + " -> ".join(find_cycle(remaining) or list(remaining)))
        levels.append(tuple(ready))
        done.update(ready)
        for n in ready:
            del remaining[n]
    return tuple(levels)
