"""/api/proxies: the organisation's proxies, assigned to clients (``proxy_id``)."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.clients import proxy_service as service
from app.clients.schemas import ProxyCreateSchema, ProxyListArgs, ProxySchema, ProxyUpdateSchema
from app.db import request_session
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires

blp = Blueprint("proxies", __name__, url_prefix="/api/proxies", description="Proxies for WhatsApp accounts")


@blp.route("")
class Proxies(MethodView):
    @blp.arguments(ProxyListArgs, location="query")
    @blp.response(200, page_schema(ProxySchema))
    @requires("proxies:read")
    def get(self, args):
        """Proxies of the organisation, newest first (?status=unchecked|ok|failing|dead)

        Lists the proxies the organisation's clients can connect through, with the result of their
        last health check. Passwords are never returned (`has_password` tells whether one is set).
        """
        return service.list_proxies(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(ProxyCreateSchema)
    @blp.response(201, ProxySchema)
    @blp.alt_response(422, description="The organisation has as many proxies as the server allows "
                                        "(`limit_reached`; `details.limit` is the cap)")
    @requires("proxies:write")
    def post(self, body):
        """Add a proxy (the password is stored encrypted and never returned)

        Adds an HTTP, HTTPS or SOCKS5 proxy. It starts `unchecked`; a periodic health check moves it
        to `ok`, `failing` or `dead`. Assign it to clients with their `proxy_id`.
        """
        return service.create_proxy(request_session(), current_principal(), **body)


@blp.route("/<proxy_id>")
class ProxyById(MethodView):
    @blp.response(200, ProxySchema)
    @requires("proxies:read")
    def get(self, proxy_id):
        """One proxy

        The proxy with its address, status and last check.
        """
        return service.get_proxy(request_session(), current_principal(), proxy_id)

    @blp.arguments(ProxyUpdateSchema)
    @blp.response(200, ProxySchema)
    @requires("proxies:write")
    def patch(self, body, proxy_id):
        """Change a proxy (a changed address or credentials make it `unchecked` again)

        Changes only the fields given; `password: null` removes the password. A new address or new
        credentials are checked again from `unchecked`.
        """
        return service.update_proxy(request_session(), current_principal(), proxy_id, **body)

    @blp.response(204)
    @blp.alt_response(409, description="Clients use the proxy (`proxy_in_use`)")
    @requires("proxies:write")
    def delete(self, proxy_id):
        """Delete a proxy no client uses

        Deletes the proxy. A proxy still assigned to clients is refused (409 `proxy_in_use`): give
        those clients another proxy, or none, first.
        """
        service.delete_proxy(request_session(), current_principal(), proxy_id)
