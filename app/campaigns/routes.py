"""/api/campaigns: campaigns, their lifecycle, estimate, test send and recipients."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.campaigns import service
from app.campaigns.schemas import (
    CampaignCreateSchema,
    CampaignListArgs,
    CampaignSchema,
    CampaignUpdateSchema,
    EtaSchema,
    RecipientListArgs,
    RecipientSchema,
    TestSendSchema,
)
from app.db import request_session
from app.idempotency import idempotent
from app.messages.schemas import MessageSchema
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires

blp = Blueprint("campaigns", __name__, url_prefix="/api/campaigns", description="Campaigns")

STATE_CONFLICT = "The campaign is not in a state that allows this (`invalid_campaign_state`; `details.status`)"


@blp.route("")
class Campaigns(MethodView):
    @blp.arguments(CampaignListArgs, location="query")
    @blp.response(200, page_schema(CampaignSchema))
    @requires("campaigns:read")
    def get(self, args):
        """Campaigns, newest first (?status=)

        Each with its clients, progress (exact, from its recipients) and, while it has work ahead,
        its ETA.
        """
        return service.list_campaigns(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(CampaignCreateSchema)
    @blp.response(201, CampaignSchema)
    @requires("campaigns:write")
    def post(self, body):
        """Create a campaign (a draft: `start` sends it)

        A template with variables (or a plain message), the clients to send from, an audience (tags,
        contact ids, lists, attributes), and optionally `scheduled_at`, a send window in the
        recipient's time zone and a frequency cap across campaigns.
        """
        return service.create_campaign(request_session(), current_principal(), **body)


@blp.route("/<campaign_id>")
class CampaignById(MethodView):
    @blp.response(200, CampaignSchema)
    @requires("campaigns:read")
    def get(self, campaign_id):
        """One campaign, with its progress and ETA

        `progress` counts its recipients by status (exact at every moment); `eta` says how long what
        is left takes at its clients' limits, within its send window.
        """
        return service.get_campaign(request_session(), current_principal(), campaign_id)

    @blp.arguments(CampaignUpdateSchema)
    @blp.response(200, CampaignSchema)
    @blp.alt_response(409, description="Once started, only the name changes (`campaign_not_editable`)")
    @requires("campaigns:write")
    def patch(self, body, campaign_id):
        """Change a draft or scheduled campaign (a running one: only its name)

        Any field of the creation; the whole is checked again (variables, clients, audience). Once
        started, a campaign keeps its content: 409 `campaign_not_editable`.
        """
        return service.update_campaign(request_session(), current_principal(), campaign_id, **body)

    @blp.response(204)
    @blp.alt_response(409, description="Running or paused: cancel it first (`campaign_active`)")
    @requires("campaigns:write")
    def delete(self, campaign_id):
        """Delete a campaign that is not running (its messages stay)

        A draft, scheduled (it will not start), completed, cancelled or failed campaign; a running or
        paused one must be cancelled first (409 `campaign_active`).
        """
        service.delete_campaign(request_session(), current_principal(), campaign_id)


@blp.route("/<campaign_id>/start")
class CampaignStart(MethodView):
    @blp.response(200, CampaignSchema)
    @blp.alt_response(409, description=STATE_CONFLICT)
    @blp.alt_response(422, description="Nobody to write to, or a template that a client cannot send "
                                        "(`campaign_not_sendable`)")
    @requires("campaigns:write")
    def post(self, campaign_id):
        """Start a campaign (now, or at its scheduled_at)

        A draft with a `scheduled_at` ahead becomes `scheduled` (the scheduler starts it then, once);
        otherwise it runs now. 422 `campaign_not_sendable` when its audience has nobody to write to or
        its template cannot be sent on one of its clients (not approved there).
        """
        return service.start(request_session(), current_principal(), campaign_id)


@blp.route("/<campaign_id>/pause")
class CampaignPause(MethodView):
    @blp.response(200, CampaignSchema)
    @blp.alt_response(409, description=STATE_CONFLICT)
    @requires("campaigns:write")
    def post(self, campaign_id):
        """Pause a running campaign (nothing more leaves)

        Its messages not sent yet stay queued, keeping their place, and give back their sending slots;
        a message already handed to WhatsApp still arrives.
        """
        return service.pause(request_session(), current_principal(), campaign_id)


@blp.route("/<campaign_id>/resume")
class CampaignResume(MethodView):
    @blp.response(200, CampaignSchema)
    @blp.alt_response(409, description=STATE_CONFLICT)
    @requires("campaigns:write")
    def post(self, campaign_id):
        """Resume a paused campaign where it stopped

        Its queued messages get new sending slots, in order; none is sent twice.
        """
        return service.resume(request_session(), current_principal(), campaign_id)


@blp.route("/<campaign_id>/cancel")
class CampaignCancel(MethodView):
    @blp.response(200, CampaignSchema)
    @blp.alt_response(409, description=STATE_CONFLICT)
    @requires("campaigns:write")
    def post(self, campaign_id):
        """Cancel a campaign (what has not left is cancelled)

        Every message not sent yet is `cancelled`; what was sent is still tracked.
        """
        return service.cancel(request_session(), current_principal(), campaign_id)


@blp.route("/<campaign_id>/estimate")
class CampaignEstimate(MethodView):
    @blp.response(200, EtaSchema)
    @requires("campaigns:read")
    def post(self, campaign_id):
        """How many it writes to and how long it takes (the ETA)

        From the audience (opted-out contacts excluded) spread over the campaign's clients, each at
        its own limits, within the send window; while running, from what is left.
        """
        return service.estimate(request_session(), current_principal(), campaign_id)


@blp.route("/<campaign_id>/test")
class CampaignTest(MethodView):
    @blp.arguments(TestSendSchema)
    @blp.response(202, MessageSchema)
    @requires("campaigns:write")
    def post(self, body, campaign_id):
        """Send the campaign's message to one number (a test; not a recipient)

        With the template's values of the campaign and of the contact with that number, if any. 422
        `missing_variables` when one has no value.
        """
        return service.test_send(request_session(), current_principal(), campaign_id, **body)


@blp.route("/<campaign_id>/recipients")
class CampaignRecipients(MethodView):
    @blp.arguments(RecipientListArgs, location="query")
    @blp.response(200, page_schema(RecipientSchema))
    @requires("campaigns:read")
    def get(self, args, campaign_id):
        """The campaign's recipients, each with its message and status (?status=)

        In the order they were written; a skipped or failed one says why (`reason`: opted_out,
        frequency_cap, missing_variables, or the message's error).
        """
        return service.list_recipients(request_session(), current_principal(), campaign_id, **args)
