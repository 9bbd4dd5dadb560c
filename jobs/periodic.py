"""Periodic jobs the scheduler fires: each entry sends one actor on its interval.

A ``jobs/<domain>.py`` module declares its own: ``every(30, "messages.sweep")``. The scheduler
(workers/scheduler.py) imports ``jobs`` first, so the list is complete when it starts.
"""
from __future__ import annotations

from dataclasses import dataclass

from workers.broker import get_broker


@dataclass(frozen=True)
class Periodic:
    actor_name: str
    every_s: float

    def fire(self) -> None:
        get_broker().get_actor(self.actor_name).send()


PERIODIC: list[Periodic] = []


def every(seconds: float, actor_name: str) -> None:
    """Have the leading scheduler send ``actor_name`` every ``seconds``."""
    if all(p.actor_name != actor_name for p in PERIODIC):
        PERIODIC.append(Periodic(actor_name, seconds))
