"""Meta's webhook for ``cloud`` clients: ``GET/POST /webhooks/meta/<client_id>``.

Public routes: Meta authenticates with the client's verify token (GET) and with the
``X-Hub-Signature-256`` HMAC of the raw body under the client's app secret (POST); both are
checked by app/clients/meta_service.py. docs/cloud-transport.md tells how to set this URL up.
"""
from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from app.clients import meta_service
from app.db import request_session
from app.security.guard import public

blp = Blueprint("meta_webhooks", __name__, url_prefix="/webhooks/meta",
                description="Inbound webhooks of Meta's WhatsApp Cloud API (cloud clients)")


class VerifyArgs(Schema):
    mode = fields.String(data_key="hub.mode", validate=validate.Length(max=32))
    verify_token = fields.String(data_key="hub.verify_token", validate=validate.Length(max=512))
    challenge = fields.String(data_key="hub.challenge", validate=validate.Length(max=512))


class ReceivedSchema(Schema):
    messages = fields.Integer(metadata={"description": "inbound messages reported"})
    statuses = fields.Integer(metadata={"description": "delivery statuses reported"})
    errors = fields.Integer(metadata={"description": "account-level errors logged"})
    skipped = fields.Integer(metadata={"description": "changes not for this client or not tracked"})


@blp.route("/<client_id>")
class MetaWebhook(MethodView):
    @blp.arguments(VerifyArgs, location="query")
    @blp.doc(operationId="meta_webhook_verify", security=[], responses={
        "200": {"description": "hub.challenge, as text/plain",
                "content": {"text/plain": {"schema": {"type": "string"}}}},
        "403": {"description": "Not a subscribe request, or the verify token does not match (`verification_failed`)"}})
    @public
    def get(self, args, client_id):
        """Meta's callback URL verification (hub.mode=subscribe, hub.verify_token, hub.challenge)

        Called by Meta when you set this URL as the callback of your WhatsApp app: answers
        `hub.challenge` as text when `hub.mode` is `subscribe` and `hub.verify_token` matches the
        client's `verify_token`. Only for `cloud` clients.
        """
        challenge = meta_service.verify_subscription(request_session(), client_id, args.get("mode"),
                                                     args.get("verify_token"), args.get("challenge"))
        return Response(challenge, status=200, mimetype="text/plain")

    @blp.response(200, ReceivedSchema)
    @blp.doc(operationId="meta_webhook_receive", security=[], responses={
        "401": {"description": "X-Hub-Signature-256 missing or wrong (`invalid_signature`): nothing is stored"}})
    @public
    def post(self, client_id):
        """Meta's signed event callback: inbound messages and delivery statuses

        Called by Meta with inbound messages and delivery statuses of a `cloud` client. The body
        must be signed with the client's `app_secret` (`X-Hub-Signature-256`); anything unsigned or
        wrongly signed is refused with 401 and nothing is stored.
        """
        return meta_service.receive(request_session(), client_id, request.get_data(cache=True),
                                    request.headers.get(meta_service.SIGNATURE_HEADER))
