"""/api/auth: sign-up, login, token refresh, logout, me."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.auth import service
from app.auth.schemas import (
    LoginSchema,
    LogoutSchema,
    MeSchema,
    PasswordChangeSchema,
    RefreshSchema,
    RegisterResponseSchema,
    RegisterSchema,
    TokensSchema,
)
from app.db import request_session
from app.security.auth import current_principal, optional_principal
from app.security.guard import public, requires

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Sign-up, login and tokens")


@blp.route("/register")
class Register(MethodView):
    @blp.doc(security=[])
    @blp.arguments(RegisterSchema)
    @blp.response(202, RegisterResponseSchema)
    @blp.alt_response(403, description="Sign-up is closed on this server (`signup_disabled`)")
    @public
    def post(self, body):
        """Create an organisation and its first admin, then sign in with POST /api/auth/login.

        Self-service sign-up: creates the organisation and its first user, with the `admin` role;
        then sign in with `POST /api/auth/login`. The answer is the same whether or not the email
        address is registered already, so that sign-up does not tell who has an account. The
        password policy is checked as usual (422 naming `password`). Refused with 403
        `signup_disabled` when the server turns sign-up off.
        """
        return service.register(request_session(), **body)


@blp.route("/login")
class Login(MethodView):
    @blp.doc(security=[])
    @blp.arguments(LoginSchema)
    @blp.response(200, TokensSchema)
    @blp.alt_response(401, description="Wrong email or password, or the user or organisation is disabled "
                                        "(`invalid_credentials`)")
    @blp.alt_response(429, description="Too many failed logins for this email or from this address (`login_throttled`)")
    @public
    def post(self, body):
        """Exchange email and password for an access token and a refresh token

        Signs a user in. The access token (`Authorization: Bearer ...`) lives `expires_in` seconds;
        use the refresh token with `POST /api/auth/refresh` for a new pair. Wrong credentials, and
        disabled users or organisations, all answer 401 `invalid_credentials`; repeated failures are
        throttled with 429 `login_throttled`.
        """
        return service.login(request_session(), **body)


@blp.route("/refresh")
class Refresh(MethodView):
    @blp.doc(security=[])
    @blp.arguments(RefreshSchema)
    @blp.response(200, TokensSchema)
    @blp.alt_response(401, description="The refresh token is unknown, expired, revoked or was already used "
                                        "(`invalid_refresh_token`; also `refresh_token_expired`, "
                                        "`refresh_token_revoked`, `refresh_token_reused`)")
    @public
    def post(self, body):
        """Exchange a refresh token for a new pair (the old refresh token is revoked)

        Rotates the session: the refresh token given is revoked and a new access token and refresh
        token are returned. Presenting a refresh token that was already used revokes every session
        of that login (`refresh_token_reused`), since someone else holds a copy.
        """
        return service.refresh(request_session(), **body)


@blp.route("/logout")
class Logout(MethodView):
    @blp.arguments(LogoutSchema)
    @blp.response(204)
    @blp.alt_response(400, description="API keys have no session to log out of (`not_a_session`)")
    @blp.alt_response(401, description="Neither a refresh token nor the session's access token was given "
                                        "(`unauthorized`)")
    @public
    def post(self, body):
        """End the session: revoke its refresh tokens and the access token presented

        Logs out: the session's refresh tokens are revoked and the access token presented is refused
        from now on. Give the refresh token in the body, or call with the session's access token.
        API keys have no session (`not_a_session`): revoke the key instead.
        """
        service.logout(request_session(), optional_principal(), **body)


@blp.route("/me")
class Me(MethodView):
    @blp.response(200, MeSchema)
    @requires("org:read")
    def get(self):
        """The user or API key calling, its role, organisation and permissions

        Tells who the credentials belong to: a user or an API key, its role and organisation, the
        permissions the role holds, and for agents the clients they may use. Useful to check a key
        before using it.
        """
        return service.me(request_session(), current_principal())


@blp.route("/password")
class Password(MethodView):
    @blp.arguments(PasswordChangeSchema)
    @blp.response(204)
    @blp.alt_response(400, description="API keys have no password (`not_a_user`)")
    @requires("org:read")
    def post(self, body):
        """Change your own password (your other sessions end)

        Changes the password of the signed-in user after checking the current one (422 naming
        `current_password` when it is wrong). Every other session of the user ends; this one goes
        on. API keys have no password (400 `not_a_user`).
        """
        service.change_password(request_session(), current_principal(), **body)
