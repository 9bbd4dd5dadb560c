"""/api/clients/{id}/sim/*: drive the simulated WhatsApp network of a ``sim`` client (404 for others)."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.clients import sim_service
from app.clients.schemas import ClientSchema, SimFaultSchema, SimInboundResultSchema, SimInboundSchema, SimNetworkSchema
from app.db import request_session
from app.security.auth import current_principal
from app.security.guard import requires

blp = Blueprint("clients_sim", __name__, url_prefix="/api/clients",
                description="The sim transport's test hooks: inbound messages, faults, network counts")


@blp.route("/<client_id>/sim/scan")
class SimScan(MethodView):
    @blp.response(202, ClientSchema)
    @blp.alt_response(409, description="The client shows no QR code to scan (`client_not_in_qr_state`)")
    @blp.alt_response(404, description="The client is not a `sim` client (`not_found`)")
    @requires("sim:drive")
    def post(self, client_id):
        """The simulated phone scans the QR code shown now (for clients with `auto_scan: false`)

        Only for `sim` clients (404 for others): the simulated phone scans the QR code the client
        shows now, as you would with a real phone, and the client reports `ready` a moment later.
        Refused unless the client's status is `qr`.
        """
        return sim_service.sim_scan(request_session(), current_principal(), client_id)


@blp.route("/<client_id>/sim/inbound")
class SimInbound(MethodView):
    @blp.arguments(SimInboundSchema)
    @blp.response(202, SimInboundResultSchema)
    @blp.alt_response(409, description="The client is not ready (`client_not_ready`)")
    @blp.alt_response(404, description="The client is not a `sim` client (`not_found`)")
    @requires("sim:drive")
    def post(self, body, client_id):
        """A simulated contact writes to this client (reported like any inbound message)

        Only for `sim` clients (404 for others): a simulated contact sends `text` from the number
        `from`, or a copy of one of the organisation's ready media (`media_id`, with `text` as its
        caption and `type` voice for a voice note). The message arrives like any inbound one: a
        `message.received` event (with media: once the copy is stored) and a row in the messages
        list.
        """
        return sim_service.sim_inbound(request_session(), current_principal(), client_id, **body)


@blp.route("/<client_id>/sim/fault")
class SimFault(MethodView):
    @blp.arguments(SimFaultSchema)
    @blp.response(202, SimNetworkSchema)
    @blp.alt_response(409, description="A disconnect of a client that is not connected (`client_not_connected`)")
    @blp.alt_response(404, description="The client is not a `sim` client (`not_found`)")
    @requires("sim:drive")
    def post(self, body, client_id):
        """Inject a fault: disconnect, ban, fail_next (count sends), or clear them all

        Only for `sim` clients (404 for others): makes the simulated network misbehave, to see how
        an integration copes. `disconnect` drops the connection (the client reconnects by itself),
        `ban` bans the account, `fail_next` fails the next `count` sends, `clear` lifts every fault.
        Answers the network counts.
        """
        return sim_service.sim_fault(request_session(), current_principal(), client_id, **body)


@blp.route("/<client_id>/sim/network")
class SimNetwork(MethodView):
    @blp.response(200, SimNetworkSchema)
    @blp.alt_response(404, description="The client is not a `sim` client (`not_found`)")
    @requires("sim:drive")
    def get(self, client_id):
        """What the simulated network received from this client, counted by message id across every process

        Only for `sim` clients (404 for others): how many sends the simulated WhatsApp network
        received from this client, how many distinct messages they were, and the duplicates, with
        the faults in force.
        """
        return sim_service.sim_network(request_session(), current_principal(), client_id)
