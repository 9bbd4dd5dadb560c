"""/api/contacts: the people an organisation writes to (phone unique per organisation)."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.contacts import service
from app.contacts.schemas import ContactCreateSchema, ContactListArgs, ContactSchema, ContactUpdateSchema
from app.db import request_session
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires

blp = Blueprint("contacts", __name__, url_prefix="/api/contacts", description="Contacts")


@blp.route("")
class Contacts(MethodView):
    @blp.arguments(ContactListArgs, location="query")
    @blp.response(200, page_schema(ContactSchema))
    @requires("contacts:read")
    def get(self, args):
        """Contacts, newest first (?tag=&q=&opted_out=)

        Lists the organisation's contacts, optionally those with a `tag`, those whose name or number
        contains `q`, or those who opted out.
        """
        return service.list_contacts(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(ContactCreateSchema)
    @blp.response(201, ContactSchema)
    @blp.alt_response(409, description="A contact with this phone number exists (`contact_exists`; "
                                        "`details.contact_id` is its id)")
    @blp.alt_response(422, description="The organisation has as many contacts as the server allows "
                                        "(`limit_reached`; `details.limit` is the cap)")
    @requires("contacts:write")
    def post(self, body):
        """Add a contact (409 contact_exists if the number is taken; a deleted one is revived)

        Adds a contact by phone number (E.164), unique in the organisation. Re-creating a deleted
        contact revives it, keeping its opt-out unless `opted_out` is given. Contacts are also
        created by themselves when you send to, or hear from, a new number.
        """
        return service.create_contact(request_session(), current_principal(), **body)


@blp.route("/<contact_id>")
class ContactById(MethodView):
    @blp.response(200, ContactSchema)
    @requires("contacts:read")
    def get(self, contact_id):
        """One contact

        The contact with its tags, attributes, opt-out state and last messages in and out.
        """
        return service.get_contact(request_session(), current_principal(), contact_id)

    @blp.arguments(ContactUpdateSchema)
    @blp.response(200, ContactSchema)
    @blp.alt_response(409, description="Another contact has this phone number (`contact_exists`)")
    @requires("contacts:write")
    def patch(self, body, contact_id):
        """Change a contact (tags and attributes are replaced); opted_out true emits contact.opted_out

        Changes only the fields given; `tags` and `attributes` are replaced as a whole. Setting
        `opted_out` to true refuses every later send to the contact (422 `contact_opted_out`) and
        emits `contact.opted_out`.
        """
        return service.update_contact(request_session(), current_principal(), contact_id, **body)

    @blp.response(204)
    @requires("contacts:write")
    def delete(self, contact_id):
        """Remove a contact (its opt-out is kept if it writes again or is re-created)

        Removes the contact. Its messages stay, and so does its opt-out: a removed contact who opted
        out is still not written to if it comes back.
        """
        service.delete_contact(request_session(), current_principal(), contact_id)
