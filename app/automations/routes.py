"""/api/automations: rules that react to inbound messages (replies, tags, webhooks, assignment)."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.automations import service
from app.automations.schemas import (
    AutomationCreateSchema,
    AutomationListArgs,
    AutomationRunListArgs,
    AutomationRunSchema,
    AutomationSchema,
    AutomationUpdateSchema,
)
from app.db import request_session
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires

blp = Blueprint("automations", __name__, url_prefix="/api/automations",
                description="Automations: automatic replies and rules on inbound messages")


@blp.route("")
class Automations(MethodView):
    @blp.arguments(AutomationListArgs, location="query")
    @blp.response(200, page_schema(AutomationSchema))
    @requires("automations:read")
    def get(self, args):
        """Automations, newest first (?enabled=&client_id=&trigger_type=)

        Lists the organisation's automations with their trigger, conditions, actions, how many
        times each fired and when it last did. Filter by `enabled`, `client_id` or `trigger_type`.
        """
        return service.list_automations(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(AutomationCreateSchema)
    @blp.response(201, AutomationSchema)
    @blp.alt_response(409, description="The organisation has the most automations it may have "
                                        "(`automation_limit`; `details.limit` is the cap)")
    @requires("automations:write")
    def post(self, body):
        """Add an automation: a trigger on inbound messages, conditions, and actions

        Adds an automation that reacts to inbound messages: a `keyword`, a contact's
        `first_message` (or first after `after_days` of silence), or a message `outside_hours`.
        When it matches and its conditions hold, its actions run in order: `reply` (an ordinary
        paced message), `tag`, `webhook` (an `automation.triggered` event) or `assign`. Give one
        `action` or a list of `actions`. A regular expression that does not compile is a 422.
        """
        return service.create_automation(request_session(), current_principal(), **body)


@blp.route("/<automation_id>")
class AutomationById(MethodView):
    @blp.response(200, AutomationSchema)
    @requires("automations:read")
    def get(self, automation_id):
        """One automation

        The automation with its trigger, conditions, actions, priority, cooldown and counters.
        """
        return service.get_automation(request_session(), current_principal(), automation_id)

    @blp.arguments(AutomationUpdateSchema)
    @blp.response(200, AutomationSchema)
    @requires("automations:write")
    def patch(self, body, automation_id):
        """Change an automation (a trigger, conditions or actions given replace the old ones)

        Changes only the fields given; `trigger`, `conditions` and `action`/`actions` are replaced
        as a whole. `enabled: false` stops it from reacting to new messages at once.
        """
        return service.update_automation(request_session(), current_principal(), automation_id, **body)

    @blp.response(204)
    @requires("automations:write")
    def delete(self, automation_id):
        """Remove an automation (it reacts to no more messages)

        Removes the automation: it reacts to no more messages. The replies it sent stay in the
        messages list.
        """
        service.delete_automation(request_session(), current_principal(), automation_id)


@blp.route("/<automation_id>/runs")
class AutomationRuns(MethodView):
    @blp.arguments(AutomationRunListArgs, location="query")
    @blp.response(200, page_schema(AutomationRunSchema))
    @requires("automations:read")
    def get(self, args, automation_id):
        """What the automation did with each message that matched it, newest first (?status=)

        One run per inbound message the automation's trigger matched: `fired` with what each action
        did (and the reply's message id), `skipped` with the reason (cooldown, conditions,
        reply_limit, stopped), or `failed` (regex_timeout, actions_failed).
        """
        return service.list_runs(request_session(), current_principal(), automation_id, **args)
