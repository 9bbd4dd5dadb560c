"""/api/auth: sign-up, login, token refresh, logout, me."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.auth import service
from app.auth.schemas import (LoginSchema, LogoutSchema, MeSchema, PasswordChangeSchema, RefreshSchema,
                              RegisterResponseSchema, RegisterSchema, TokensSchema)
from app.db import request_session
from app.security.auth import current_principal, optional_principal
from app.security.permissions import public, requires

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Sign-up, login and tokens")


@blp.route("/register")
class Register(MethodView):
    @blp.doc(security=[])
    @blp.arguments(RegisterSchema)
    @blp.response(202, RegisterResponseSchema)
    @public
    def post(self, body):
        """Create an organisation and its first admin, then sign in with POST /api/auth/login.

        The answer is the same whether or not the email address is registered already, so that
        sign-up does not tell who has an account (403 when ALLOW_SIGNUP=false)."""
        return service.register(request_session(), **body)


@blp.route("/login")
class Login(MethodView):
    @blp.doc(security=[])
    @blp.arguments(LoginSchema)
    @blp.response(200, TokensSchema)
    @public
    def post(self, body):
        """Exchange email and password for an access token and a refresh token"""
        return service.login(request_session(), **body)


@blp.route("/refresh")
class Refresh(MethodView):
    @blp.doc(security=[])
    @blp.arguments(RefreshSchema)
    @blp.response(200, TokensSchema)
    @public
    def post(self, body):
        """Exchange a refresh token for a new pair (the old refresh token is revoked)"""
        return service.refresh(request_session(), **body)


@blp.route("/logout")
class Logout(MethodView):
    @blp.arguments(LogoutSchema)
    @blp.response(204)
    @public
    def post(self, body):
        """End the session: revoke its refresh tokens and the access token presented"""
        service.logout(request_session(), optional_principal(), **body)


@blp.route("/me")
class Me(MethodView):
    @blp.response(200, MeSchema)
    @requires("org:read")
    def get(self):
        """The user or API key calling, its role, organisation and permissions"""
        return service.me(request_session(), current_principal())


@blp.route("/password")
class Password(MethodView):
    @blp.arguments(PasswordChangeSchema)
    @blp.response(204)
    @requires("org:read")
    def post(self, body):
        """Change your own password (your other sessions end)"""
        service.change_password(request_session(), current_principal(), **body)
