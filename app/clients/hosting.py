"""The session host of this process, as the ``sessions.*`` jobs see it.

Stateful (web) clients run on session hosts: the worker processes of the ``sessions`` pool
(workers/session_host.py). The pool's runtime installs its host here when a worker starts
(``install``); the jobs (jobs/sessions.py) reach it through ``current_host()`` without depending
on the runtime.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from app.messages.statuses import SendOutcome

#: what a ``sessions.start`` did on this host
StartOutcome = Literal["skipped", "running", "forwarded", "started", "failed"]
#: what a ``sessions.stop`` / ``sessions.logout`` did
ShutdownOutcome = Literal["skipped", "forwarded", "not_running", "stopped", "logged_out"]
#: what a ``sessions.send`` did: handed back to ``messages.send`` (rerouted), or the send's outcome
HostSendOutcome = SendOutcome | Literal["rerouted"]


class SessionHostApi(Protocol):
    """What the ``sessions.*`` jobs ask of a session host; each returns what happened (for logs)."""

    def start_session(self, client_id: str) -> StartOutcome: ...

    def stop_session(self, client_id: str) -> ShutdownOutcome: ...

    def logout_session(self, client_id: str) -> ShutdownOutcome: ...

    def send(self, message_id: str) -> HostSendOutcome: ...


_provider: Callable[[], SessionHostApi] | None = None


def install(provider: Callable[[], SessionHostApi]) -> None:
    """Make ``provider`` the source of this process's session host (the ``sessions`` pool runtime)."""
    global _provider
    _provider = provider


def current_host() -> SessionHostApi:
    """This process's session host; only a ``sessions`` pool worker has one."""
    if _provider is None:
        raise RuntimeError("this process runs no session host: sessions.* jobs run in the sessions pool")
    return _provider()
