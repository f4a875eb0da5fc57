"""Import-linter contract types of this project (``contract_types`` in ``pyproject.toml``).

``generator_families``: every package directly under ``container`` is a generator family - the
ones that exist and the ones added later, with no edit to the configuration. Families never
import each other (import-linter's independence check), and the container's other modules (the
shared code: base, registry, family contract, pyfunc base, ...) import no family (its forbidden
check). ``ignore_imports`` applies to both.
"""

from __future__ import annotations

import importlib.util
from copy import deepcopy
from pathlib import Path

from grimp import ImportGraph
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.independence import IndependenceContract
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def family_packages(container: str, children: set[str]) -> list[str]:
    """The children of ``container`` that are packages (a folder with ``__init__.py``)."""
    spec = importlib.util.find_spec(container)
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    leaf = {c: c.rsplit(".", 1)[1] for c in children}
    return sorted(
        c for c in children if any((r / leaf[c] / "__init__.py").is_file() for r in roots)
    )


class GeneratorFamiliesContract(Contract):
    """Families under ``container`` are independent; the container's shared modules know none."""

    type_name = "generator_families"

    container = fields.StringField()
    ignore_imports = fields.ListField(subfield=fields.StringField(), required=False)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        children = set(graph.find_children(self.container))
        families = family_packages(self.container, children)
        shared = sorted(children - set(families))
        ignores = list(self.ignore_imports or [])
        parts: list[tuple[Contract, ContractCheck]] = []
        if len(families) > 1:
            independence = IndependenceContract(
                f"{self.name}: families {', '.join(f.rsplit('.', 1)[1] for f in families)}",
                self.session_options,
                {"modules": families, "ignore_imports": ignores},
            )
            parts.append((independence, independence.check(deepcopy(graph), verbose)))
        if families and shared:
            forbidden = ForbiddenContract(
                f"{self.name}: shared modules",
                self.session_options,
                {
                    "source_modules": shared,
                    "forbidden_modules": families,
                    "ignore_imports": ignores,
                },
            )
            parts.append((forbidden, forbidden.check(deepcopy(graph), verbose)))
        return ContractCheck(
            kept=all(c.kept for _, c in parts),
            warnings=[w for _, c in parts for w in c.warnings],
            metadata={"parts": parts, "families": families},
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        for contract, part in check.metadata["parts"]:
            if not part.kept:
                contract.render_broken_contract(part)
