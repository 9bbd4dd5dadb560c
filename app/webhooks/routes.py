"""/api/webhooks: endpoints that receive signed events, their secrets, test events and delivery log."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.db import request_session
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.permissions import requires
from app.webhooks import service
from app.webhooks.schemas import (DeliveryAttemptListArgs, DeliveryAttemptSchema, WebhookCreateSchema, WebhookListArgs,
                                  WebhookSchema, WebhookTestResultSchema, WebhookUpdateSchema, WebhookWithSecretSchema)

blp = Blueprint("webhooks", __name__, url_prefix="/api/webhooks",
                description="Webhook endpoints: signed event deliveries (Standard Webhooks) with retries")


@blp.route("")
class Webhooks(MethodView):
    @blp.arguments(WebhookListArgs, location="query")
    @blp.response(200, page_schema(WebhookSchema))
    @requires("webhooks:read")
    def get(self, args):
        """Endpoints of the organisation, newest first (?enabled=)"""
        return service.list_webhooks(request_session(), current_principal(), **args)

    @idempotent(secret=True)
    @blp.arguments(WebhookCreateSchema)
    @blp.response(201, WebhookWithSecretSchema)
    @requires("webhooks:write")
    def post(self, body):
        """Add an endpoint; its signing secret is shown only in this response"""
        return service.create_webhook(request_session(), current_principal(), **body)


@blp.route("/<webhook_id>")
class WebhookById(MethodView):
    @blp.response(200, WebhookSchema)
    @requires("webhooks:read")
    def get(self, webhook_id):
        """One endpoint"""
        return service.get_webhook(request_session(), current_principal(), webhook_id)

    @blp.arguments(WebhookUpdateSchema)
    @blp.response(200, WebhookSchema)
    @requires("webhooks:write")
    def patch(self, body, webhook_id):
        """Change the URL, events, description, or enable/disable the endpoint"""
        return service.update_webhook(request_session(), current_principal(), webhook_id, **body)

    @blp.response(204)
    @requires("webhooks:write")
    def delete(self, webhook_id):
        """Remove an endpoint; its pending deliveries are abandoned"""
        service.delete_webhook(request_session(), current_principal(), webhook_id)


@blp.route("/<webhook_id>/rotate-secret")
class WebhookRotateSecret(MethodView):
    @blp.response(200, WebhookWithSecretSchema)
    @requires("webhooks:write")
    def post(self, webhook_id):
        """A new signing secret, shown only here; the old one keeps signing alongside for 24 h"""
        return service.rotate_secret(request_session(), current_principal(), webhook_id)


@blp.route("/<webhook_id>/test")
class WebhookTest(MethodView):
    @blp.response(202, WebhookTestResultSchema)
    @requires("webhooks:write")
    def post(self, webhook_id):
        """Send a `webhook.test` event to this endpoint only"""
        return service.send_test(request_session(), current_principal(), webhook_id)


@blp.route("/<webhook_id>/deliveries")
class WebhookDeliveries(MethodView):
    @blp.arguments(DeliveryAttemptListArgs, location="query")
    @blp.response(200, page_schema(DeliveryAttemptSchema))
    @requires("webhooks:read")
    def get(self, args, webhook_id):
        """Delivery attempts to this endpoint, newest first (?event_id=)"""
        return service.list_attempts(request_session(), current_principal(), webhook_id, **args)
