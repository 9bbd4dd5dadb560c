"""/api/contact-lists: named groups of contacts, and their members."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.contacts import lists
from app.contacts.schemas import (
    ContactListCreateSchema,
    ContactListMembersResultSchema,
    ContactListMembersSchema,
    ContactListSchema,
    ContactListUpdateSchema,
    ContactSchema,
)
from app.db import request_session
from app.idempotency import idempotent
from app.openapi_examples import EXAMPLES
from app.pagination import ListArgs, page_schema
from app.security.auth import current_principal
from app.security.guard import requires

blp = Blueprint("contact_lists", __name__, url_prefix="/api/contact-lists", description="Contact lists")

LIST = {"id": "lst_01JDQ5B2C3D4E5F6G7H8J9K0M1", "name": "Newsletter", "description": "Opted in at checkout",
        "member_count": 1250, "created_at": "2026-11-26T09:30:00+00:00", "updated_at": "2026-11-26T09:30:00+00:00"}
CREATE = {"name": "Newsletter", "description": "Opted in at checkout"}
MEMBERS = {"contact_ids": [EXAMPLES["Contact"]["id"]]}
UNKNOWN = ("Some contact ids are no contact of the organisation (`validation_error`; `details.contact_ids` "
           "names each by its index): nothing was changed")


@blp.route("")
class ContactLists(MethodView):
    @blp.arguments(ListArgs, location="query")
    @blp.response(200, page_schema(ContactListSchema), example={"items": [LIST], "next_cursor": None})
    @requires("contacts:read")
    def get(self, args):
        """Contact lists, newest first

        The organisation's contact lists, each with its `member_count` (members that are contacts).
        """
        return lists.list_lists(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(ContactListCreateSchema, example=CREATE)
    @blp.response(201, ContactListSchema, example={**LIST, "member_count": 0})
    @blp.alt_response(409, description="A contact list with this name exists (`contact_list_exists`; "
                                       "`details.list_id` is its id)")
    @requires("contacts:write")
    def post(self, body):
        """Create a contact list (409 contact_list_exists if the name is taken)

        Creates an empty list; its name is unique among the organisation's lists. Add members with
        `POST /api/contact-lists/{list_id}/members`, or import a CSV file into it (`list_id`).
        """
        return lists.create_list(request_session(), current_principal(), **body)


@blp.route("/<list_id>")
class ContactListById(MethodView):
    @blp.response(200, ContactListSchema, example=LIST)
    @requires("contacts:read")
    def get(self, list_id):
        """One contact list

        The list with its name, description and `member_count`.
        """
        return lists.get_list(request_session(), current_principal(), list_id)

    @blp.arguments(ContactListUpdateSchema, example={"name": "Newsletter (EU)"})
    @blp.response(200, ContactListSchema, example=LIST)
    @blp.alt_response(409, description="Another contact list has this name (`contact_list_exists`)")
    @requires("contacts:write")
    def patch(self, body, list_id):
        """Rename a contact list or change its description

        Changes only the fields given; the name stays unique among the organisation's lists.
        """
        return lists.update_list(request_session(), current_principal(), list_id, **body)

    @blp.response(204)
    @requires("contacts:write")
    def delete(self, list_id):
        """Delete a contact list (its contacts stay)

        Deletes the list (it and its members are no longer shown); the contacts themselves stay.
        """
        lists.delete_list(request_session(), current_principal(), list_id)


@blp.route("/<list_id>/members")
class ContactListMembers(MethodView):
    @blp.arguments(ListArgs, location="query")
    @blp.response(200, page_schema(ContactSchema, name="ContactListMemberPage"),
                  example={"items": [EXAMPLES["Contact"]], "next_cursor": None})
    @requires("contacts:read")
    def get(self, args, list_id):
        """The contacts of a list, newest contact first

        The list's members that are contacts (deleted contacts are left out), cursor-paginated.
        """
        return lists.list_members(request_session(), current_principal(), list_id, **args)

    @blp.arguments(ContactListMembersSchema, example=MEMBERS)
    @blp.response(200, ContactListMembersResultSchema, example={"added": 1, "removed": 0, "member_count": 1251})
    @blp.alt_response(422, description=UNKNOWN)
    @requires("contacts:write")
    def post(self, body, list_id):
        """Add contacts to a list (idempotent: members already in it stay once)

        Adds up to 1000 contacts by id; `added` counts those that were not members yet. Every id
        must be a contact of the organisation, else nothing is added (422 naming them).
        """
        return lists.add_members(request_session(), current_principal(), list_id, body["contact_ids"])


@blp.route("/<list_id>/members/remove")
class ContactListMembersRemove(MethodView):
    @blp.arguments(ContactListMembersSchema, example=MEMBERS)
    @blp.response(200, ContactListMembersResultSchema, example={"added": 0, "removed": 1, "member_count": 1250})
    @blp.alt_response(422, description=UNKNOWN)
    @requires("contacts:write")
    def post(self, body, list_id):
        """Remove contacts from a list (idempotent: ids that are not members change nothing)

        Removes up to 1000 contacts by id from the list; the contacts themselves stay. Every id must
        be a contact of the organisation (deleted ones too), else nothing is removed (422 naming them).
        """
        return lists.remove_members(request_session(), current_principal(), list_id, body["contact_ids"])
