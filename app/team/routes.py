"""/api/users: the people of the organisation, their roles and assigned clients."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.db import request_session
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.permissions import requires
from app.team import service
from app.team.schemas import UserClientsSchema, UserCreateSchema, UserListArgs, UserSchema, UserUpdateSchema

blp = Blueprint("team", __name__, url_prefix="/api/users", description="Users, roles and client assignments")


@blp.route("")
class Users(MethodView):
    @blp.arguments(UserListArgs, location="query")
    @blp.response(200, page_schema(UserSchema))
    @requires("users:read")
    def get(self, args):
        """Users of the organisation, newest first (?role=&status=)"""
        return service.list_users(request_session(), current_principal(), **args)

    @idempotent
    @blp.arguments(UserCreateSchema)
    @blp.response(201, UserSchema)
    @requires("users:write")
    def post(self, body):
        """Add a user (a role at most your own)"""
        return service.create_user(request_session(), current_principal(), **body)


@blp.route("/<user_id>")
class UserById(MethodView):
    @blp.response(200, UserSchema)
    @requires("users:read")
    def get(self, user_id):
        """One user"""
        return service.get_user(request_session(), current_principal(), user_id)

    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserSchema)
    @requires("users:write")
    def patch(self, body, user_id):
        """Change a user's name, email, role, status or password"""
        return service.update_user(request_session(), current_principal(), user_id, **body)

    @blp.response(204)
    @requires("users:write")
    def delete(self, user_id):
        """Remove a user (the last admin cannot be removed)"""
        service.delete_user(request_session(), current_principal(), user_id)


@blp.route("/<user_id>/clients")
class UserClients(MethodView):
    @blp.arguments(UserClientsSchema)
    @blp.response(200, UserSchema)
    @requires("users:assign_clients")
    def put(self, body, user_id):
        """Set the clients an agent may use (replaces the list)"""
        return service.set_user_clients(request_session(), current_principal(), user_id, body["client_ids"])
