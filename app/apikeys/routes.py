"""/api/api-keys: keys for scripts and integrations (X-API-Key)."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.apikeys import service
from app.apikeys.schemas import ApiKeyCreatedSchema, ApiKeyCreateSchema, ApiKeyListArgs, ApiKeySchema
from app.db import request_session
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires

blp = Blueprint("apikeys", __name__, url_prefix="/api/api-keys", description="API keys")


@blp.route("")
class ApiKeys(MethodView):
    @blp.arguments(ApiKeyListArgs, location="query")
    @blp.response(200, page_schema(ApiKeySchema))
    @requires("apikeys:read")
    def get(self, args):
        """Keys of the organisation, newest first (revoked ones with ?include_revoked=true)

        Lists the organisation's API keys with their name, role, prefix and when each was last used
        (updated at most once a minute). The key itself is never shown again after creation.
        """
        return service.list_api_keys(request_session(), current_principal(), **args)

    @idempotent(secret=True)
    @blp.arguments(ApiKeyCreateSchema)
    @blp.response(201, ApiKeyCreatedSchema)
    @blp.alt_response(403, description="The role asked for is above your own (`role_above_own`)")
    @blp.alt_response(422, description="The organisation has as many API keys as the server allows "
                                        "(`limit_reached`; `details.limit` is the cap)")
    @requires("apikeys:write")
    def post(self, body):
        """Create a key (its role at most your own); the key is shown only in this response

        Creates an API key for scripts and integrations, to send as `X-API-Key`. Its role is at most
        your own (`role_above_own` otherwise); `expires_at` is optional and must be in the future.
        Store `key` now: only a hash of it is kept.
        """
        return service.create_api_key_response(request_session(), current_principal(), **body)


@blp.route("/<key_id>")
class ApiKeyById(MethodView):
    @blp.response(204)
    @blp.alt_response(403, description="The key's role is above your own (`role_above_own`)")
    @requires("apikeys:write")
    def delete(self, key_id):
        """Revoke a key, effective immediately

        Revokes the key: the next request that uses it is refused with 401 `api_key_revoked`. A key
        whose role is above your own cannot be revoked by you. Revoking is recorded in the audit
        log.
        """
        service.revoke_api_key(request_session(), current_principal(), key_id)
