"""An import-linter contract type: no module may import itself back through other modules.

import-linter's own ``acyclic_siblings`` compares packages; this one compares modules, so two
domains may use each other's lower modules (the team disables a user's sessions, auth builds on
the team) while a real cycle (a imports b imports a, however far round) fails the suite.
"""
from __future__ import annotations

import sys

from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class NoModuleCycles(Contract):
    type_name = "no_module_cycles"
    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        prefixes = tuple(self.packages)  # type: ignore[arg-type]
        modules = sorted(m for m in graph.modules if m == prefixes or m.split(".")[0] in prefixes)
        imports = {m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i in modules) for m in modules}
        cycles = strongly_connected(modules, imports)
        return ContractCheck(kept=not cycles, metadata={"cycles": [
            [(a, b) for a in cycle for b in imports[a] if b in cycle] for cycle in cycles]})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for edges in check.metadata["cycles"]:
            output.print_error("These modules import each other round in a cycle:")
            for a, b in edges:
                output.print_error(f"    {a} -> {b}")
            output.new_line()


def strongly_connected(nodes: list[str], edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm: every group of two or more nodes that reach each other."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(nodes) + 100))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in nodes:
        if node not in index:
            visit(node)
    return found
