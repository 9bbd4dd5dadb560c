import pytest


@pytest.fixture
def unpaced(session, org):
    """A ready client of ``org`` whose sends are not paced."""
    from tests import factories as f

    return f.make_client(session, organization_id=org.id, status="ready", config={"pacing": False})
