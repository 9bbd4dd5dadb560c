"""How the ``cloud`` transport reads Meta's errors: every Meta error code this platform treats
specially is in ``META_ERRORS``, the one table that decides retry-or-fail and which client status
to report; ``error_from_response`` turns a failed Graph API call into a classified ``GraphError``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import requests

from app.transports.base import PermanentSendError, TransientSendError


@dataclass(frozen=True)
class ErrorRule:
    """What one Meta error means here."""

    retry: bool                       # True: TransientSendError (retry with backoff); False: fail now
    code: str                         # our error code (messages.error_code, acks' error.code)
    retry_after_ms: int | None = None  # backoff before the retry (a Retry-After header can lengthen it)
    report: str | None = None         # client status to report: "failed" (credentials) / "banned" (account)


#: Meta error code -> behaviour. The one place that decides; docs/cloud-transport.md mirrors it.
META_ERRORS: dict[int, ErrorRule] = {
    # throughput: back off and retry
    130429: ErrorRule(True, "rate_limited", 5_000),                 # Cloud API throughput reached
    131056: ErrorRule(True, "pair_rate_limited", 60_000),           # too many to the same recipient
    4: ErrorRule(True, "rate_limited", 60_000),                     # app API-call rate limit
    80007: ErrorRule(True, "rate_limited", 60_000),                 # WABA rate limit
    # Meta having trouble: retry
    1: ErrorRule(True, "provider_unavailable", 10_000),             # API unknown
    2: ErrorRule(True, "provider_unavailable", 10_000),             # API service (downtime, overload)
    131000: ErrorRule(True, "provider_unavailable", 10_000),        # something went wrong
    131016: ErrorRule(True, "provider_unavailable", 30_000),        # service unavailable
    # the 24-hour customer service window: only a template may open it again
    131047: ErrorRule(False, "outside_customer_window"),
    # the recipient: never retried
    131026: ErrorRule(False, "invalid_recipient"),                  # undeliverable (not on WhatsApp, ...)
    131030: ErrorRule(False, "invalid_recipient"),                  # not in the test number's allowed list
    131021: ErrorRule(False, "invalid_recipient"),                  # recipient is the sender
    # the content
    131051: ErrorRule(False, "unsupported_message_type"),
    131052: ErrorRule(False, "media_download_failed"),
    131053: ErrorRule(False, "media_upload_failed"),
    132000: ErrorRule(False, "template_params_mismatch"),
    132001: ErrorRule(False, "template_not_found"),
    132012: ErrorRule(False, "template_params_mismatch"),
    100: ErrorRule(False, "invalid_request"),                       # invalid parameter (see RECIPIENT_PARAMETER)
    131009: ErrorRule(False, "invalid_request"),                    # parameter value not valid (idem)
    131048: ErrorRule(False, "spam_rate_limited"),                  # quality limit: retrying makes it worse
    # credentials and the account: fail the message and report the client
    0: ErrorRule(False, "auth_failed", report="failed"),            # AuthException
    190: ErrorRule(False, "auth_failed", report="failed"),          # access token expired / invalid
    10: ErrorRule(False, "auth_failed", report="failed"),           # permission denied
    133010: ErrorRule(False, "phone_not_registered", report="failed"),
    368: ErrorRule(False, "account_restricted", report="banned"),   # blocked for policy violations
    131031: ErrorRule(False, "account_locked", report="banned"),
}
#: 200-299 are "API permission" errors: as 10
PERMISSION_RANGE = range(200, 300)
#: codes 100 / 131009 about the ``to`` parameter are an invalid recipient, not a malformed request
RECIPIENT_PARAMETER = re.compile(r"""(['"`]to['"`]|\bparam(eter)?\s+to\b|\brecipient\b|phone.number)""", re.I)
INVALID_RECIPIENT = ErrorRule(False, "invalid_recipient")
#: without a known Meta code, by HTTP status (5xx, timeouts and connection errors retry)
HTTP_FALLBACK = {401: ErrorRule(False, "auth_failed", report="failed"), 429: ErrorRule(True, "rate_limited", 5_000)}
SERVER_ERROR = ErrorRule(True, "provider_unavailable", 10_000)
NETWORK_ERROR = ErrorRule(True, "transport_unavailable")
#: base_url (or the proxy) is an address the guard refuses (app/security/ssrf.py): the config is wrong
BLOCKED_ADDRESS = ErrorRule(False, "address_not_allowed", report="failed")
UNKNOWN_ERROR = ErrorRule(False, "provider_error")


def classify(code: int | None, http_status: int | None = None, text: str = "") -> ErrorRule:
    """The rule for a Meta error ``code`` (from a response or a webhook), else by HTTP status."""
    if code is not None:
        rule = META_ERRORS.get(code)
        if rule is None and code in PERMISSION_RANGE:
            rule = META_ERRORS[10]
        if rule is not None:
            if rule.code == "invalid_request" and RECIPIENT_PARAMETER.search(text or ""):
                return INVALID_RECIPIENT
            return rule
    if http_status is not None:
        if http_status in HTTP_FALLBACK:
            return HTTP_FALLBACK[http_status]
        if http_status >= 500:
            return SERVER_ERROR
    return UNKNOWN_ERROR


class GraphError(Exception):
    """A failed Graph API call, already classified."""

    def __init__(self, message: str, rule: ErrorRule, *, meta_code: int | None = None,
                 http_status: int | None = None, retry_after_ms: int | None = None, details: dict | None = None):
        super().__init__(message)
        self.rule, self.meta_code, self.http_status = rule, meta_code, http_status
        self.retry_after_ms = retry_after_ms if retry_after_ms is not None else rule.retry_after_ms
        self.details = {k: v for k, v in {"meta_code": meta_code, "http_status": http_status,
                                           **(details or {})}.items() if v is not None}

    def to_send_error(self) -> TransientSendError | PermanentSendError:
        if self.rule.retry:
            return TransientSendError(str(self), code=self.rule.code, retry_after_ms=self.retry_after_ms,
                                      details=self.details)
        return PermanentSendError(str(self), code=self.rule.code, details=self.details)


def _retry_after_ms(response: requests.Response) -> int | None:
    value = response.headers.get("Retry-After", "")
    return int(value) * 1000 if value.isdigit() else None


def error_from_response(response: requests.Response) -> GraphError:
    """Read Graph's ``{"error": {"code", "message", "error_data": {"details"}, "fbtrace_id"}}``."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    code = err.get("code") if isinstance(err.get("code"), int) else None
    message = str(err.get("message") or f"HTTP {response.status_code} from the Graph API")[:500]
    detail = (err.get("error_data") or {}).get("details") if isinstance(err.get("error_data"), dict) else None
    rule = classify(code, response.status_code, f"{message} {detail or ''}")
    header_ms = _retry_after_ms(response)
    retry_ms = max(filter(None, (header_ms, rule.retry_after_ms)), default=None) if rule.retry else None
    return GraphError(message, rule, meta_code=code, http_status=response.status_code, retry_after_ms=retry_ms,
                      details={"details": str(detail)[:500] if detail else None, "fbtrace_id": err.get("fbtrace_id")})
