"""/api/contacts: the people an organisation writes to (phone unique per organisation)."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.contacts import service
from app.contacts.schemas import ContactCreateSchema, ContactListArgs, ContactSchema, ContactUpdateSchema
from app.db import request_session
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.permissions import requires

blp = Blueprint("contacts", __name__, url_prefix="/api/contacts", description="Contacts")


@blp.route("")
class Contacts(MethodView):
    @blp.arguments(ContactListArgs, location="query")
    @blp.response(200, page_schema(ContactSchema))
    @requires("contacts:read")
    def get(self, args):
        """Contacts, newest first (?tag=&q=&opted_out=)"""
        return service.list_contacts(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(ContactCreateSchema)
    @blp.response(201, ContactSchema)
    @requires("contacts:write")
    def post(self, body):
        """Add a contact (409 contact_exists if the number is taken; a deleted one is revived)"""
        return service.create_contact(request_session(), current_principal(), **body)


@blp.route("/<contact_id>")
class ContactById(MethodView):
    @blp.response(200, ContactSchema)
    @requires("contacts:read")
    def get(self, contact_id):
        """One contact"""
        return service.get_contact(request_session(), current_principal(), contact_id)

    @blp.arguments(ContactUpdateSchema)
    @blp.response(200, ContactSchema)
    @requires("contacts:write")
    def patch(self, body, contact_id):
        """Change a contact (tags and attributes are replaced); opted_out true emits contact.opted_out"""
        return service.update_contact(request_session(), current_principal(), contact_id, **body)

    @blp.response(204)
    @requires("contacts:write")
    def delete(self, contact_id):
        """Remove a contact (its opt-out is kept if it writes again or is re-created)"""
        service.delete_contact(request_session(), current_principal(), contact_id)
