"""/api/clients: WhatsApp accounts and their lifecycle (start, stop, logout, QR)."""
from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from app.clients import service
from app.clients.schemas import ClientCreateSchema, ClientListArgs, ClientSchema, ClientUpdateSchema, QrSchema
from app.db import request_session
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires

blp = Blueprint("clients", __name__, url_prefix="/api/clients", description="WhatsApp accounts (clients)")

_NOT_IN_QR = {"description": "The client shows no QR code now, its status is not `qr` (`client_not_in_qr_state`; "
                              "`details.status` is its status). While it is `starting`, `Retry-After` (and "
                              "`details.retry_after`) say when to ask again",
              "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}}


@blp.route("")
class Clients(MethodView):
    @blp.arguments(ClientListArgs, location="query")
    @blp.response(200, page_schema(ClientSchema))
    @requires("clients:read")
    def get(self, args):
        """Clients of the organisation (agents: those assigned to them), newest first (?status=&transport=)

        Lists the WhatsApp accounts of the organisation, optionally filtered by `status` or
        `transport`. Agents see only the clients assigned to them.
        """
        return service.list_clients(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(ClientCreateSchema)
    @blp.response(201, ClientSchema)
    @blp.alt_response(422, description="The organisation has as many clients as the server allows "
                                        "(`limit_reached`; `details.limit` is the cap)")
    @requires("clients:write")
    def post(self, body):
        """Add a WhatsApp account (status `created`; start it to connect)

        Adds a WhatsApp account with its transport (`sim`, `cloud` or `web`), transport settings,
        sending limits and optional proxy. Secret settings (`access_token`, `app_secret`,
        `verify_token`) are stored encrypted and never returned. Nothing connects until `POST
        /api/clients/{client_id}/start`.
        """
        return service.create_client(request_session(), current_principal(), **body)


@blp.route("/<client_id>")
class ClientById(MethodView):
    @blp.response(200, ClientSchema)
    @requires("clients:read")
    def get(self, client_id):
        """One client

        The client with its status, phone number (once connected), limits and non-secret settings.
        """
        return service.get_client(request_session(), current_principal(), client_id)

    @blp.arguments(ClientUpdateSchema)
    @blp.response(200, ClientSchema)
    @requires("clients:write")
    def patch(self, body, client_id):
        """Change name, limits, proxy or config (config is merged; a running session uses it from its next start)

        Changes only the fields given. `config` is merged into the stored settings (a `null` value
        removes a key); `limits` are merged into the current limits; `proxy_id: null` detaches the
        proxy. A running session uses new settings from its next start.
        """
        return service.update_client(request_session(), current_principal(), client_id, **body)

    @blp.response(204)
    @requires("clients:write")
    def delete(self, client_id):
        """Delete a client: it is stopped and logged out by a job

        Deletes the client. A running session is stopped and the account logged out in the
        background; its messages stay readable.
        """
        service.delete_client(request_session(), current_principal(), client_id)


@blp.route("/<client_id>/start")
class ClientStart(MethodView):
    @blp.response(202, ClientSchema)
    @blp.alt_response(409, description="The client is already starting, showing a QR code or ready "
                                        "(`client_already_running`)")
    @requires("clients:operate")
    def post(self, client_id):
        """Connect: status goes `starting` -> `qr` -> `ready` (or `failed`)

        Starts connecting the account in the background and answers at once with the client in
        `starting`. Follow the status with `GET /api/clients/{client_id}` or the `client.*` webhook
        events: `qr` (fetch the code with `GET /api/clients/{client_id}/qr` and scan it), then
        `ready`, or `failed` with `last_error`.
        """
        return service.start_client(request_session(), current_principal(), client_id)


@blp.route("/<client_id>/stop")
class ClientStop(MethodView):
    @blp.response(202, ClientSchema)
    @blp.alt_response(409, description="The client is not running (`client_not_running`)")
    @requires("clients:operate")
    def post(self, client_id):
        """Close the session and keep the login (the next start needs no QR)

        Stops the session (status `stopped`); the login is kept, so the next start connects without
        a new QR scan. Messages wait queued until the client is ready again.
        """
        return service.stop_client(request_session(), current_principal(), client_id)


@blp.route("/<client_id>/logout")
class ClientLogout(MethodView):
    @blp.response(202, ClientSchema)
    @blp.alt_response(409, description="The client was never started (`client_not_started`)")
    @requires("clients:operate")
    def post(self, client_id):
        """Log the account out (the next start needs a new QR scan)

        Logs the account out of WhatsApp and forgets its login: the next start shows a new QR code
        to scan.
        """
        return service.logout_client(request_session(), current_principal(), client_id)


@blp.route("/<client_id>/qr")
class ClientQr(MethodView):
    @blp.response(200, QrSchema)
    @blp.doc(responses={"200": {"content": {"application/json": {"schema": QrSchema},
                                            "image/png": {"schema": {"type": "string", "format": "binary"}}},
                                "description": "The QR code: JSON, or a PNG with `Accept: image/png`"},
                        "409": _NOT_IN_QR})
    @requires("clients:operate")
    def get(self, client_id):
        """The QR code to scan while the status is `qr`, as JSON or (Accept: image/png) as a PNG

        The current QR code while the client's status is `qr`: as JSON (`qr` is the text the code
        encodes), or as a PNG image with `Accept: image/png`. Scan it in WhatsApp under Linked
        devices. Codes rotate: fetch again after `expires_at`.
        """
        qr = service.get_qr(request_session(), current_principal(), client_id)
        if request.accept_mimetypes.best_match(("application/json", "image/png")) == "image/png":
            return Response(service.qr_png(qr["qr"]), mimetype="image/png", headers={"Cache-Control": "no-store"})
        return qr
