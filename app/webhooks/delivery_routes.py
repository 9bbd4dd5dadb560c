"""/api/webhook-deliveries: one delivery (an event to an endpoint) and redelivering it."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.db import request_session
from app.security.auth import current_principal
from app.security.guard import requires
from app.webhooks import service
from app.webhooks.schemas import DeliverySchema

blp = Blueprint("webhook_deliveries", __name__, url_prefix="/api/webhook-deliveries",
                description="Webhook deliveries: status, attempts, redelivery")


@blp.route("/<delivery_id>")
class DeliveryById(MethodView):
    @blp.response(200, DeliverySchema)
    @requires("webhooks:read")
    def get(self, delivery_id):
        """One delivery with its attempts

        A delivery (one event to one endpoint) with its status and every attempt, oldest first.
        """
        return service.get_delivery(request_session(), current_principal(), delivery_id)


@blp.route("/<delivery_id>/redeliver")
class DeliveryRedeliver(MethodView):
    @blp.response(202, DeliverySchema)
    @blp.alt_response(409, description="The endpoint is disabled (`webhook_disabled`), or an attempt is under "
                                        "way (`delivery_in_progress`)")
    @requires("webhooks:write")
    def post(self, delivery_id):
        """Deliver the event to the endpoint again, now, with a fresh retry schedule

        Delivers the event again now, with a fresh retry schedule, whatever happened before (for
        example after fixing the receiver). Refused while the endpoint is disabled or an attempt is
        under way.
        """
        return service.redeliver(request_session(), current_principal(), delivery_id)
