"""/api/audit-logs: who did what, read-only (there is no way to change or delete a row)."""
from flask.views import MethodView
from flask_smorest import Blueprint

from app.audit import service
from app.audit.schemas import AuditLogListArgs, AuditLogSchema
from app.db import request_session
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires

blp = Blueprint("audit", __name__, url_prefix="/api/audit-logs", description="The audit log")


@blp.route("")
class AuditLogs(MethodView):
    @blp.arguments(AuditLogListArgs, location="query")
    @blp.response(200, page_schema(AuditLogSchema))
    @requires("audit:read")
    def get(self, args):
        """Audit rows, newest first (?actor=&action=&since=&target=)

        Who did what in the organisation: sign-ins (and refused ones), changes to users, keys,
        clients, contacts and webhooks, with the address, user agent and request id of each request.
        `action` takes an exact action or a prefix ending in `*` (`user.*`). Rows cannot be changed
        or deleted through the API.
        """
        return service.list_audit_logs(request_session(), current_principal(), **args)
