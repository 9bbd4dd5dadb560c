"""/api/contacts/import and /api/contacts/imports: CSV imports of contacts, run by a worker."""
from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint
from webargs.flaskparser import FlaskParser
from werkzeug.datastructures import CombinedMultiDict

from app.contacts import imports
from app.contacts.schemas import (
    ContactImportListArgs,
    ContactImportSchema,
    ContactImportUploadSchema,
)
from app.db import request_session
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import requires
from config import settings


class _UploadParser(FlaskParser):
    """webargs' parser whose ``form`` is a multipart body's form fields *and* files, read by one
    schema (so the document shows one ``multipart/form-data`` body with all of them)."""

    def load_form(self, req, schema):
        return self._makeproxy(CombinedMultiDict([req.form, req.files]), schema)


class _UploadBlueprint(Blueprint):
    ARGUMENTS_PARSER = _UploadParser()
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {**Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
                                             "form": "multipart/form-data"}


blp = _UploadBlueprint("contact_imports", __name__, url_prefix="/api/contacts", description="Contact imports")

#: multipart framing and the form fields around the file
_FORM_OVERHEAD = 64 * 1024

EXAMPLE = {"id": "imp_01JDQ5A1B2C3D4E5F6G7H8J9K0", "status": "running", "filename": "customers.csv",
           "list_id": None, "default_region": "US", "total": 4000, "created": 3650, "updated": 310, "invalid": 12,
           "duplicates": 28, "errors": [{"line": 17, "reason": "the phone is empty"}], "error": None,
           "size_bytes": 2457600, "processed_bytes": 196608, "progress": 0.08,
           "created_at": "2026-11-26T09:30:00+00:00", "started_at": "2026-11-26T09:30:01+00:00",
           "completed_at": None, "updated_at": "2026-11-26T09:30:04+00:00"}


@blp.before_request
def _upload_limit():
    """The import takes files up to CONTACT_IMPORT_MAX_BYTES (the app's default limit is for media)."""
    if request.endpoint == "contact_imports.ContactImportUpload":
        limit = settings.CONTACT_IMPORT_MAX_BYTES + _FORM_OVERHEAD
        if (request.content_length or 0) > limit:
            raise imports.too_large()
        request.max_content_length = limit


@blp.route("/import")
class ContactImportUpload(MethodView):
    @blp.arguments(ContactImportUploadSchema, location="form")
    @blp.response(202, ContactImportSchema, example={**EXAMPLE, "status": "queued", "total": 0, "created": 0,
                                                     "updated": 0, "invalid": 0, "duplicates": 0, "errors": [],
                                                     "processed_bytes": 14, "progress": 0.0, "started_at": None})
    @blp.alt_response(413, description="The file is larger than CONTACT_IMPORT_MAX_BYTES (`payload_too_large`; "
                                       "`details.limit_bytes`)")
    @requires("contacts:write")
    def post(self, form):
        """Import contacts from a CSV file (multipart `file`); 202 with the import to poll

        Uploads a CSV file (UTF-8, with or without BOM, `,` or `;` between fields) whose first line
        names the columns: `phone`, `name`, `tags` (several separated by `|` or `,`) and any other
        column as an attribute; `mapping` (JSON) says what other headers are. The file is checked
        (text, header, size, at most CONTACT_IMPORT_MAX_ROWS rows) and stored, and a worker imports
        it: poll `GET /api/contacts/imports/{import_id}` for progress and counts.
        """
        upload = form.pop("file")
        return imports.create_import(request_session(), current_principal(), stream=upload.stream,
                                     filename=upload.filename, **form)


@blp.route("/imports")
class ContactImports(MethodView):
    @blp.arguments(ContactImportListArgs, location="query")
    @blp.response(200, page_schema(ContactImportSchema), example={"items": [EXAMPLE], "next_cursor": None})
    @requires("contacts:read")
    def get(self, args):
        """Contact imports, newest first (?status=)

        The organisation's CSV imports with their status and counts, optionally only those in one
        status (queued, running, completed, failed).
        """
        return imports.list_imports(request_session(), current_principal(), **args)


@blp.route("/imports/<import_id>")
class ContactImportById(MethodView):
    @blp.response(200, ContactImportSchema, example=EXAMPLE)
    @requires("contacts:read")
    def get(self, import_id):
        """One contact import: status, progress, counts and the first 100 invalid rows

        `total` rows read so far = `created` + `updated` + `duplicates` + `invalid`; `errors` holds
        the first 100 invalid rows with their line and reason; `progress` goes from 0 to 1 while
        the import runs.
        """
        return imports.get_import(request_session(), current_principal(), import_id)
