import pytest


@pytest.fixture
def wa_web(override_settings):
    """The fixture WhatsApp Web (tests/fixtures/wa_web) on loopback, and WEB_URL pointing at it."""
    from tests.fixtures.wa_web.server import FakeWhatsAppWeb

    server = FakeWhatsAppWeb().start()
    override_settings(WEB_URL=server.url)
    yield server
    server.stop()
