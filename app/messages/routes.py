"""Messages: send (one, many, the v2.0 send-message), read, list, cancel.

Sends answer 202: the message is queued and leaves when its client is ready and its pacing slot
comes (``scheduled_for``); follow it with GET or the ``message.*`` webhook events.
"""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.db import request_session
from app.idempotency import idempotent
from app.messages import service
from app.messages.schemas import (
    BatchCreateSchema,
    BatchResultSchema,
    MessageCreateSchema,
    MessageListArgs,
    MessageSchema,
    SendMessageResultSchema,
    SendMessageSchema,
)
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires

blp = Blueprint("messages", __name__, url_prefix="/api", description="Messages: send, track, cancel")


@blp.route("/clients/<client_id>/send-message")
class SendMessage(MethodView):
    @idempotent
    @blp.arguments(SendMessageSchema)
    @blp.response(202, SendMessageResultSchema)
    @blp.alt_response(403, description="You are not assigned to this client (`client_not_assigned`)")
    @blp.alt_response(422, description="The contact opted out of messages (`contact_opted_out`)")
    @requires("messages:send")
    def post(self, body, client_id):
        """Send a message from this client (the v2.0 call): {to, message} → 202 {messageId, status}

        Queues a message from the client in the path to `to` (E.164): a text with `message`, media
        with `media_id` (`message` is the caption), or a template with `template_id` and
        `variables`. Answers at once with the message id; the message leaves when the client is
        ready and its sending limits allow. A contact who opted out is refused (422
        `contact_opted_out`).
        """
        return service.send_message(request_session(), current_principal(), client_id, **body)


@blp.route("/messages")
class Messages(MethodView):
    @blp.arguments(MessageListArgs, location="query")
    @blp.response(200, page_schema(MessageSchema))
    @requires("messages:read")
    def get(self, args):
        """Messages, newest first (?client_id=&status=&direction=&contact=&since=&until=)

        Lists outbound and inbound messages, filtered by client, status, direction, contact (id or
        phone number) and creation time (`since` inclusive, `until` exclusive). Agents see only the
        messages of their clients.
        """
        return service.list_messages(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(MessageCreateSchema)
    @blp.response(202, MessageSchema)
    @blp.alt_response(422, description="The contact opted out of messages (`contact_opted_out`)")
    @requires("messages:send")
    def post(self, body):
        """Send a text, media or template message (optionally at scheduled_at)

        Queues a message from `client_id` to `to` (E.164) and answers at once with the message in
        `queued`. `scheduled_for` says when the client's sending limits let it go (no earlier than
        `scheduled_at` if given). Follow it to `sent`, `delivered` and `read` with `GET
        /api/messages/{message_id}` or the `message.*` events. A contact who opted out is refused
        (422 `contact_opted_out`).
        """
        return service.create_message(request_session(), current_principal(), **body)


@blp.route("/messages/batch")
class MessageBatch(MethodView):
    @idempotent
    @blp.arguments(BatchCreateSchema)
    @blp.response(202, BatchResultSchema)
    @requires("messages:send")
    def post(self, body):
        """Send up to 1000 messages from one client; an invalid item gets its own error

        Queues up to 1000 messages from one client in one request. Each item is shaped like the body
        of `POST /api/messages` without `client_id` and is accepted or refused on its own: the
        answer lists, in order, either `{id, status, scheduled_for}` or `{error}` for each item.
        """
        return service.create_batch(request_session(), current_principal(), **body)


@blp.route("/messages/<message_id>")
class MessageById(MethodView):
    @blp.response(200, MessageSchema)
    @requires("messages:read")
    def get(self, message_id):
        """One message, with its status and timestamps

        The message with its status, the time of each step (queued, sending, sent, delivered, read,
        failed), its pacing slot `scheduled_for`, and `error` when it failed.
        """
        return service.get_message(request_session(), current_principal(), message_id)


@blp.route("/messages/<message_id>/cancel")
class CancelMessage(MethodView):
    @blp.response(200, MessageSchema)
    @blp.alt_response(409, description="The message is no longer queued (`message_not_cancellable`; "
                                        "`details.status` is its status)")
    @requires("messages:send")
    def post(self, message_id):
        """Cancel a message still queued (409 once it is sending or later)

        Cancels a message that is still `queued` (including scheduled ones): it will not be sent,
        and its sending slot is given back to the client. Once it is `sending` or later it can no
        longer be cancelled.
        """
        return service.cancel_message(request_session(), current_principal(), message_id)
