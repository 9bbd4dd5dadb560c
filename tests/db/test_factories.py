"""Every model has a factory in tests/factories.py, and every factory builds a valid row."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import inspect

import app.models  # noqa: F401  (registers every model)
from app.db import Base
from tests import factories

FACTORIES = {name: fn for name, fn in vars(factories).items() if name.startswith("make_") and callable(fn)}
MAPPED = {m.class_ for m in Base.registry.mappers}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_every_model_has_a_factory():
    missing = sorted(f"make_{_snake(cls.__name__)}" for cls in MAPPED if f"make_{_snake(cls.__name__)}" not in FACTORIES)
    assert not missing, f"models without a factory in tests/factories.py: {missing}"


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factory_builds_a_persistent_row(session, name):
    factory = FACTORIES[name]
    first = factory(session)
    second = factory(session)  # defaults must not collide with each other
    for obj in (first, second):
        assert type(obj) in MAPPED
        assert name == f"make_{_snake(type(obj).__name__)}"
        state = inspect(obj)
        assert state.persistent and all(v is not None for v in state.identity)
    assert inspect(first).identity != inspect(second).identity


def test_parents_share_the_given_organization(session):
    org = factories.make_organization(session)
    client = factories.make_client(session, organization_id=org.id)
    msg = factories.make_message(session, client_id=client.id)
    assert msg.organization_id == org.id
    recipient = factories.make_campaign_recipient(session, organization_id=org.id)
    campaign = session.get(app.models.Campaign, recipient.campaign_id)
    contact = session.get(app.models.Contact, recipient.contact_id)
    assert campaign.organization_id == contact.organization_id == org.id
    inbound = factories.make_message(session, client_id=client.id, direction="inbound")
    assert inbound.status == "received" and inbound.from_phone
