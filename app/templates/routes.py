"""/api/templates: message templates, their previews and their reviews (Meta's, for cloud clients)."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.db import request_session
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires
from app.templates import service
from app.templates.schemas import (
    PreviewResultSchema,
    PreviewSchema,
    SubmitSchema,
    TemplateCreateSchema,
    TemplateListArgs,
    TemplateSchema,
    TemplateUpdateSchema,
)

blp = Blueprint("templates", __name__, url_prefix="/api/templates", description="Templates")


@blp.route("")
class Templates(MethodView):
    @blp.arguments(TemplateListArgs, location="query")
    @blp.response(200, page_schema(TemplateSchema))
    @requires("templates:read")
    def get(self, args):
        """Templates, newest first (?q=&category=&language=)

        Each with its variables and its review on every client that needs one (`approvals`).
        """
        return service.list_templates(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(TemplateCreateSchema)
    @blp.response(201, TemplateSchema)
    @blp.alt_response(409, description="A template with this name and language exists (`template_exists`)")
    @requires("templates:write")
    def post(self, body):
        """Create a template (submitted to Meta for every cloud client)

        A body with `{{name}}` or `{{1}}` placeholders, an optional header (text, or an image, video or
        document of `/api/media`), footer and buttons (quick reply, URL, phone), checked against Meta's
        rules. The template is submitted for review on every client that needs one (cloud: Meta's
        review; `approvals` shows each verdict as it comes).
        """
        return service.create_template(request_session(), current_principal(), **body)


@blp.route("/<template_id>")
class TemplateById(MethodView):
    @blp.response(200, TemplateSchema)
    @requires("templates:read")
    def get(self, template_id):
        """One template, with its reviews

        Its variables, and its review on every client that needs one (Meta's for cloud clients), with
        Meta's reason when rejected or paused.
        """
        return service.get_template(request_session(), current_principal(), template_id)

    @blp.arguments(TemplateUpdateSchema)
    @blp.response(200, TemplateSchema)
    @blp.alt_response(409, description="A scheduled or running campaign uses the template (`template_in_use`)")
    @requires("templates:write")
    def patch(self, body, template_id):
        """Change a template (new content is reviewed again); name and language stay

        Changing the body, header, footer, buttons or category submits the template for review again
        wherever it was reviewed; until approved again it cannot be sent there.
        """
        return service.update_template(request_session(), current_principal(), template_id, **body)

    @blp.response(204)
    @blp.alt_response(409, description="A scheduled or running campaign uses the template (`template_in_use`)")
    @requires("templates:write")
    def delete(self, template_id):
        """Delete a template (also from Meta's template manager)

        Messages already sent keep their text. The name can be used again.
        """
        service.delete_template(request_session(), current_principal(), template_id)


@blp.route("/<template_id>/preview")
class TemplatePreview(MethodView):
    @blp.arguments(PreviewSchema)
    @blp.response(200, PreviewResultSchema)
    @blp.alt_response(422, description="A variable has no value (`missing_variables`; `details.missing` names them)")
    @requires("templates:read")
    def post(self, body, template_id):
        """Render a template with variables, or with a contact's fields

        `{{name}}`, `{{phone}}` and `{{attributes.<key>}}` come from the contact given by
        `contact_id`; `variables` win over them.
        """
        return service.preview(request_session(), current_principal(), template_id, **body)


@blp.route("/<template_id>/submit")
class TemplateSubmit(MethodView):
    @blp.arguments(SubmitSchema)
    @blp.response(202, TemplateSchema)
    @requires("templates:write")
    def post(self, body, template_id):
        """Submit a template for review again (to given clients, or to every one that needs it)

        For a client added after the template, or after a rejection was fixed elsewhere. The
        reviews become `pending` at once; the verdicts follow.
        """
        return service.submit_to(request_session(), current_principal(), template_id, body["client_ids"])
