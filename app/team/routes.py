"""/api/users: the people of the organisation, their roles and assigned clients."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.db import request_session
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires
from app.team import service
from app.team.schemas import UserClientsSchema, UserCreateSchema, UserListArgs, UserSchema, UserUpdateSchema

blp = Blueprint("team", __name__, url_prefix="/api/users", description="Users, roles and client assignments")


@blp.route("")
class Users(MethodView):
    @blp.arguments(UserListArgs, location="query")
    @blp.response(200, page_schema(UserSchema))
    @requires("users:read")
    def get(self, args):
        """Users of the organisation, newest first (?role=&status=)

        Lists the organisation's users with their role and status, and for agents the clients they
        may use.
        """
        return service.list_users(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(UserCreateSchema)
    @blp.response(201, UserSchema)
    @blp.alt_response(403, description="The role asked for is above your own (`role_above_own`)")
    @blp.alt_response(409, description="A user with this email already exists (`email_taken`)")
    @blp.alt_response(422, description="The organisation has as many users as the server allows "
                                        "(`limit_reached`; `details.limit` is the cap)")
    @requires("users:write")
    def post(self, body):
        """Add a user (a role at most your own)

        Adds a user who signs in with this email and password. You can grant a role up to your own
        (`role_above_own` otherwise); emails are unique across the server.
        """
        return service.create_user(request_session(), current_principal(), **body)


@blp.route("/<user_id>")
class UserById(MethodView):
    @blp.response(200, UserSchema)
    @requires("users:read")
    def get(self, user_id):
        """One user

        The user with their role, status and, for agents, assigned clients.
        """
        return service.get_user(request_session(), current_principal(), user_id)

    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserSchema)
    @blp.alt_response(403, description="The user's role, or the role asked for, is above your own (`role_above_own`)")
    @blp.alt_response(409, description="The email is taken (`email_taken`), or this would leave no active "
                                        "admin (`last_admin`)")
    @requires("users:write")
    def patch(self, body, user_id):
        """Change a user's name, email, role, status or password

        Changes only the fields given. Disabling a user ends their sessions; so does setting another
        user's password. You cannot change your own role or status, grant a role above your own, or
        demote or disable the last active admin.
        """
        return service.update_user(request_session(), current_principal(), user_id, **body)

    @blp.response(204)
    @blp.alt_response(403, description="The user's role is above your own (`role_above_own`)")
    @blp.alt_response(409, description="The user is the last active admin (`last_admin`)")
    @requires("users:write")
    def delete(self, user_id):
        """Remove a user (the last admin cannot be removed)

        Removes the user: their sessions end and they can no longer sign in; the audit trail keeps
        their actions. The last active admin cannot be removed.
        """
        service.delete_user(request_session(), current_principal(), user_id)


@blp.route("/<user_id>/clients")
class UserClients(MethodView):
    @blp.arguments(UserClientsSchema)
    @blp.response(200, UserSchema)
    @blp.alt_response(403, description="The user's role is above your own (`role_above_own`)")
    @blp.alt_response(409, description="The user is not an agent (`not_an_agent`)")
    @blp.alt_response(404, description="A client id is not one of the organisation's (`not_found`; "
                                        "`details.client_ids` lists them)")
    @requires("users:assign_clients")
    def put(self, body, user_id):
        """Set the clients an agent may use (replaces the list)

        Replaces the list of clients an agent may use (send from, read the messages of). Only agents
        are assigned clients: other roles use every client of the organisation. Every id must be a
        client of the organisation (404 otherwise, with the unknown ids in `details`).
        """
        return service.set_user_clients(request_session(), current_principal(), user_id, body["client_ids"])
