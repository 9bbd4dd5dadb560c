"""/api/webhooks: endpoints that receive signed events, their secrets, test events and delivery log."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.db import request_session
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires
from app.webhooks import service
from app.webhooks.schemas import (
    DeliveryAttemptListArgs,
    DeliveryAttemptSchema,
    WebhookCreateSchema,
    WebhookListArgs,
    WebhookSchema,
    WebhookTestResultSchema,
    WebhookUpdateSchema,
    WebhookWithSecretSchema,
)

blp = Blueprint("webhooks", __name__, url_prefix="/api/webhooks",
                description="Webhook endpoints: signed event deliveries (Standard Webhooks) with retries")


@blp.route("")
class Webhooks(MethodView):
    @blp.arguments(WebhookListArgs, location="query")
    @blp.response(200, page_schema(WebhookSchema))
    @requires("webhooks:read")
    def get(self, args):
        """Endpoints of the organisation, newest first (?enabled=)

        Lists the organisation's webhook endpoints with their health: consecutive failures, the last
        success, and why the platform disabled one if it did. Secrets are never shown here.
        """
        return service.list_webhooks(request_session(), current_principal(), **args)

    @idempotent(secret=True)
    @blp.arguments(WebhookCreateSchema)
    @blp.response(201, WebhookWithSecretSchema)
    @blp.alt_response(409, description="The organisation has the most endpoints it may have (`webhook_limit`)")
    @requires("webhooks:write")
    def post(self, body):
        """Add an endpoint; its signing secret is shown only in this response

        Adds an endpoint that receives the events listed in `events` (or every event with `["*"]`)
        as signed POST requests (Standard Webhooks). The URL must be http(s) on a public address.
        Keep `secret` to verify signatures: it is shown only here and on rotation.
        """
        return service.create_webhook(request_session(), current_principal(), **body)


@blp.route("/<webhook_id>")
class WebhookById(MethodView):
    @blp.response(200, WebhookSchema)
    @requires("webhooks:read")
    def get(self, webhook_id):
        """One endpoint

        The endpoint with its events, state and delivery health.
        """
        return service.get_webhook(request_session(), current_principal(), webhook_id)

    @blp.arguments(WebhookUpdateSchema)
    @blp.response(200, WebhookSchema)
    @requires("webhooks:write")
    def patch(self, body, webhook_id):
        """Change the URL, events, description, or enable/disable the endpoint

        Changes only the fields given. Re-enabling an endpoint (also one the platform disabled)
        resets its failure count; events missed meanwhile are not redelivered by themselves.
        """
        return service.update_webhook(request_session(), current_principal(), webhook_id, **body)

    @blp.response(204)
    @requires("webhooks:write")
    def delete(self, webhook_id):
        """Remove an endpoint; its pending deliveries are abandoned

        Removes the endpoint: nothing more is delivered to it, pending retries included.
        """
        service.delete_webhook(request_session(), current_principal(), webhook_id)


@blp.route("/<webhook_id>/rotate-secret")
class WebhookRotateSecret(MethodView):
    @blp.response(200, WebhookWithSecretSchema)
    @requires("webhooks:write")
    def post(self, webhook_id):
        """A new signing secret, shown only here; the old one keeps signing alongside for 24 h

        Replaces the signing secret. For 24 hours deliveries carry two signatures, one per secret,
        so the receiver can switch to the new secret without missing a beat.
        """
        return service.rotate_secret(request_session(), current_principal(), webhook_id)


@blp.route("/<webhook_id>/test")
class WebhookTest(MethodView):
    @blp.response(202, WebhookTestResultSchema)
    @blp.alt_response(409, description="The endpoint is disabled (`webhook_disabled`)")
    @requires("webhooks:write")
    def post(self, webhook_id):
        """Send a `webhook.test` event to this endpoint only

        Sends a `webhook.test` event to this endpoint only (whatever its event list), delivered and
        retried like any other. Follow it in the endpoint's deliveries.
        """
        return service.send_test(request_session(), current_principal(), webhook_id)


@blp.route("/<webhook_id>/deliveries")
class WebhookDeliveries(MethodView):
    @blp.arguments(DeliveryAttemptListArgs, location="query")
    @blp.response(200, page_schema(DeliveryAttemptSchema))
    @requires("webhooks:read")
    def get(self, args, webhook_id):
        """Delivery attempts to this endpoint, newest first (?event_id=)

        Every attempt to deliver an event to this endpoint: the HTTP status or the error, how long
        it took, the start of the response body, and when the next retry is due. Filter by
        `event_id`.
        """
        return service.list_attempts(request_session(), current_principal(), webhook_id, **args)
