"""Who is acting: a user (JWT), an API key, or the system (CLI, jobs). Services take it explicitly."""
from __future__ import annotations

from dataclasses import dataclass, field

ROLE_RANK = {"viewer": 0, "agent": 1, "manager": 2, "admin": 3}


@dataclass(frozen=True)
class Principal:
    organization_id: str
    kind: str  # "user" | "api_key" | "system"
    id: str | None
    role: str
    #: for agents: the client ids they may act on (None = every client of the organisation)
    client_ids: frozenset[str] | None = None
    email: str | None = None
    name: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_agent(self) -> bool:
        return self.role == "agent"

    def outranks_or_equals(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def can_use_client(self, client_id: str) -> bool:
        return self.client_ids is None or client_id in self.client_ids


def SystemPrincipal(organization_id: str) -> Principal:
    """The platform itself acting in an organisation (CLI, scheduled jobs)."""
    return Principal(organization_id=organization_id, kind="system", id=None, role="admin")
