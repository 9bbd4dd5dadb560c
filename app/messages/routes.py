"""Messages: send (one, many, the v2.0 send-message), read, list, cancel.

Sends answer 202: the message is queued and leaves when its client is ready and its pacing slot
comes (``scheduled_for``); follow it with GET or the ``message.*`` webhook events.
"""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.db import request_session
from app.idempotency import idempotent
from app.messages import service
from app.messages.schemas import (BatchCreateSchema, BatchResultSchema, MessageCreateSchema, MessageListArgs,
                                  MessageSchema, SendMessageResultSchema, SendMessageSchema)
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.permissions import requires

blp = Blueprint("messages", __name__, url_prefix="/api", description="Messages: send, track, cancel")


@blp.route("/clients/<client_id>/send-message")
class SendMessage(MethodView):
    @idempotent
    @blp.arguments(SendMessageSchema)
    @blp.response(202, SendMessageResultSchema)
    @requires("messages:send")
    def post(self, body, client_id):
        """Send a message from this client (the v2.0 call): {to, message} → 202 {messageId, status}"""
        return service.send_message(request_session(), current_principal(), client_id, **body)


@blp.route("/messages")
class Messages(MethodView):
    @blp.arguments(MessageListArgs, location="query")
    @blp.response(200, page_schema(MessageSchema))
    @requires("messages:read")
    def get(self, args):
        """Messages, newest first (?client_id=&status=&direction=&contact=&since=&until=)"""
        return service.list_messages(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(MessageCreateSchema)
    @blp.response(202, MessageSchema)
    @requires("messages:send")
    def post(self, body):
        """Send a text, media or template message (optionally at scheduled_at)"""
        return service.create_message(request_session(), current_principal(), **body)


@blp.route("/messages/batch")
class MessageBatch(MethodView):
    @idempotent
    @blp.arguments(BatchCreateSchema)
    @blp.response(202, BatchResultSchema)
    @requires("messages:send")
    def post(self, body):
        """Send up to 1000 messages from one client; an invalid item gets its own error"""
        return service.create_batch(request_session(), current_principal(), **body)


@blp.route("/messages/<message_id>")
class MessageById(MethodView):
    @blp.response(200, MessageSchema)
    @requires("messages:read")
    def get(self, message_id):
        """One message, with its status and timestamps"""
        return service.get_message(request_session(), current_principal(), message_id)


@blp.route("/messages/<message_id>/cancel")
class CancelMessage(MethodView):
    @blp.response(200, MessageSchema)
    @requires("messages:send")
    def post(self, message_id):
        """Cancel a message still queued (409 once it is sending or later)"""
        return service.cancel_message(request_session(), current_principal(), message_id)
