"""Examples of request and response bodies for the OpenAPI document, by schema name.

``app/openapi.py`` attaches ``EXAMPLES[name]`` to every JSON body whose schema is ``name``; a list
page (``<Name>Page``) shows one item of ``<Name>``. tests/api/test_openapi.py checks that every body has
one and that each is valid against its schema, so an example cannot drift from what it shows.
"""
from __future__ import annotations

import copy

ORG = "org_01JDQ4Z8K2W7M3N5P6Q9R0S1TA"
USER = "usr_01JDQ4Z8K3B4C5D6E7F8G9H0JK"
AGENT = "usr_01JDQ53X2A1B3C4D5E6F7G8H9J"
KEY = "key_01JDQ4ZD5F6G7H8J9K0M1N2P3Q"
CLIENT = "cli_01JDQ4ZQ6V8M2K5T9XW3RBNC7H"
PROXY = "prx_01JDQ4ZM3N4P5Q6R7S8T9V0W1X"
CONTACT = "ctc_01JDQ50A1B2C3D4E5F6G7H8J9K"
MESSAGE = "msg_01JDQ51B2C3D4E5F6G7H8J9K0M"
WEBHOOK = "whk_01JDQ52C3D4E5F6G7H8J9K0M1N"
DELIVERY = "dlv_01JDQ52X4Y5Z6A7B8C9D0E1F2G"
EVENT = "evt_01JDQ52W3X4Y5Z6A7B8C9D0E1F"
T0 = "2026-11-26T09:30:00+00:00"
T1 = "2026-11-26T09:30:04+00:00"
TOKEN = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c3JfMDFKRFE0WjhLM0I0QzVENkU3RjhHOUgwSksifQ.c2lnbmF0dXJl"
REFRESH = "rt_3q2-7wJ0xT8m1Yp4nV6bZ9cK5dL0sF2gH4jQ8rE1uA"
LIMITS = {"per_minute": 20, "per_hour": 100, "per_day": 1000, "min_gap_ms": 2000, "max_gap_ms": 5000}

_user = {"id": USER, "organization_id": ORG, "email": "ada@acme.test", "name": "Ada Lovelace", "role": "admin",
         "status": "active", "client_ids": None, "last_login_at": T0, "created_at": T0, "updated_at": T0}
_tokens = {"access_token": TOKEN, "refresh_token": REFRESH, "token_type": "Bearer", "expires_in": 900,
           "refresh_expires_in": 2592000, "user": _user}
_client = {"id": CLIENT, "name": "Sales", "transport": "sim", "status": "ready", "phone": "+14155550100",
           "limits": LIMITS, "proxy_id": None, "paused": False, "config": {"scan_after_ms": 1000},
           "last_error": None, "status_changed_at": T0, "created_at": T0, "last_seen_at": T1}
_proxy = {"id": PROXY, "name": "Office proxy", "scheme": "socks5", "host": "proxy.acme.test", "port": 1080,
          "username": "wa", "has_password": True, "status": "ok", "last_checked_at": T0, "last_error": None,
          "created_at": T0, "updated_at": T0}
_contact = {"id": CONTACT, "phone": "+14155550123", "name": "Grace Hopper", "tags": ["customer", "vip"],
            "attributes": {"plan": "pro"}, "opted_out": False, "opted_out_at": None, "opted_in_at": None,
            "last_inbound_at": T1, "last_outbound_at": T0, "created_at": T0, "updated_at": T1}
_message = {"id": MESSAGE, "client_id": CLIENT, "direction": "outbound", "to": "+14155550123", "from": None,
            "contact_id": CONTACT, "type": "text", "text": "Your order has shipped", "media_id": None, "caption": None,
            "template_id": None, "variables": {}, "status": "queued", "error": None, "attempts": 0,
            "campaign_id": None, "scheduled_at": None, "scheduled_for": T1, "created_at": T0, "queued_at": T0,
            "sending_at": None, "sent_at": None, "delivered_at": None, "read_at": None, "failed_at": None,
            "cancelled_at": None}
_webhook = {"id": WEBHOOK, "url": "https://hooks.acme.test/whatsapp", "events": ["message.sent", "message.received"],
            "description": "CRM", "enabled": True, "disabled_reason": None, "failing_since": None,
            "consecutive_failures": 0, "last_success_at": T1, "previous_secret_expires_at": None,
            "created_at": T0, "updated_at": T0}
_attempt = {"id": DELIVERY, "attempt_id": 1, "event_id": EVENT, "event_type": "message.sent", "attempt": 1,
            "status_code": 200, "duration_ms": 84, "error": None, "response": "ok", "succeeded": True,
            "created_at": T1, "next_attempt_at": None}
_api_key = {"id": KEY, "name": "CRM sync", "role": "manager", "effective_role": "manager", "prefix": "sk_7Hq2Lm9X",
            "created_by": USER, "expires_at": None, "revoked_at": None, "last_used_at": T1, "created_at": T0}

AUTOMATION = "aut_01JDQ54D5E6F7G8H9J0K1M2N3P"
TEMPLATE = "tpl_01JDQ54D5E6F7G8H9J0K1M2N3P"
CAMPAIGN = "cmp_01JDQ55E6F7G8H9J0K1M2N3P4Q"
_template = {"id": TEMPLATE, "name": "order_shipped", "language": "en_US", "category": "utility",
             "body": "Hi {{name}}, your order {{order}} is on its way.",
             "header": {"type": "text", "text": "Order {{order}}"},
             "footer": "Reply STOP to opt out", "buttons": [
                 {"type": "url", "text": "Track", "url": "https://shop.acme.test/track/{{order}}"}],
             "variables": ["order", "name"], "meta_status": "approved", "approvals": [
                 {"client_id": CLIENT, "transport": "cloud", "status": "approved", "reason": None,
                  "meta_template_id": "1234567890123456", "submitted_at": T0, "reviewed_at": T1}],
             "created_at": T0, "updated_at": T1}
_progress = {"total": 1200, "queued": 400, "sent": 800, "delivered": 780, "read": 512, "failed": 3, "skipped": 14,
             "cancelled": 0, "replied": 41}
_eta = {"recipients": 400, "seconds": 1440.0, "finishes_at": "2026-11-26T10:00:00+00:00",
        "clients": [{"client_id": CLIENT, "recipients": 400, "seconds": 1440.0}], "skipped": 14}
_campaign = {"id": CAMPAIGN, "name": "Spring sale", "status": "running", "client_ids": [CLIENT],
             "template_id": TEMPLATE, "message": None, "variables": {"order": "SPRING"},
             "audience": {"tags": ["vip"], "tags_match": "any"}, "scheduled_at": T0,
             "send_window": {"start": "09:00", "end": "20:00", "timezone": "Europe/Lisbon"},
             "frequency_cap": {"max": 1, "hours": 24}, "progress": _progress,
             "eta": {k: v for k, v in _eta.items() if k != "skipped"}, "started_at": T0, "paused_at": None,
             "completed_at": None, "cancelled_at": None, "last_error": None, "created_at": T0, "updated_at": T1}
_hours = {"tz": "Europe/Paris", "days": {d: [["09:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
          "holidays": ["2026-12-25"]}
_automation = {"id": AUTOMATION, "name": "Prices", "client_id": None,
               "trigger": {"type": "keyword", "keywords": ["price", "pricing"], "match": "contains",
                           "case_sensitive": False},
               "conditions": {"tags_none": ["customer"]},
               "action": {"type": "reply", "message": "Hi {{contact.name}}! Our prices: https://acme.test/prices"},
               "actions": [{"type": "reply", "message": "Hi {{contact.name}}! Our prices: https://acme.test/prices"},
                           {"type": "tag", "add": ["lead"]}],
               "enabled": True, "priority": 100, "cooldown_seconds": 60, "stop_processing": False, "fire_count": 12,
               "last_fired_at": T1, "created_by": USER, "created_at": T0, "updated_at": T0}

EXAMPLES: dict[str, dict] = {
    # auth
    "Register": {"organization": "Acme", "name": "Ada Lovelace", "email": "ada@acme.test",
                 "password": "correct horse battery"},
    "RegisterResponse": {"status": "accepted", "message": (
        "If this email address was not registered yet, the organisation and its admin account exist now: "
        "sign in with POST /api/auth/login. If it was, sign in with that account's password.")},
    "Login": {"email": "ada@acme.test", "password": "correct horse battery"},
    "Tokens": _tokens,
    "Refresh": {"refresh_token": REFRESH},
    "Logout": {"refresh_token": REFRESH},
    "PasswordChange": {"current_password": "correct horse battery", "new_password": "a longer passphrase, now"},
    "Me": {"kind": "api_key", "id": KEY, "name": "CRM sync", "email": None, "role": "manager",
           "organization": {"id": ORG, "name": "Acme"}, "client_ids": None,
           "permissions": ["clients:read", "messages:read", "messages:send"],
           "api_key": {"prefix": "sk_7Hq2Lm9X", "role": "manager", "created_by": USER, "expires_at": None,
                       "created_at": T0}},
    # team, keys, audit
    "User": _user,
    "UserCreate": {"email": "alan@acme.test", "name": "Alan Turing", "password": "a long enough passphrase",
                   "role": "agent"},
    "UserUpdate": {"role": "manager"},
    "UserClients": {"client_ids": [CLIENT]},
    "ApiKey": _api_key,
    "ApiKeyCreate": {"name": "CRM sync", "role": "manager", "expires_at": "2027-11-26T00:00:00+00:00"},
    "ApiKeyCreated": {"id": KEY, "name": "CRM sync", "role": "manager", "prefix": "sk_7Hq2Lm9X",
                      "key": "sk_7Hq2Lm9XaB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z", "expires_at": "2027-11-26T00:00:00+00:00",
                      "created_by": USER, "created_at": T0},
    "AuditLog": {"id": "aud_01JDQ53A1B2C3D4E5F6G7H8J9K", "actor_type": "user", "actor_id": USER,
                 "action": "user.update", "target_type": "user", "target_id": AGENT, "ip": "203.0.113.7",
                 "user_agent": "curl/8.5.0", "request_id": "6386dfc3341223af511b9a7a",
                 "changes": {"role": {"from": "agent", "to": "manager"}}, "created_at": T0},
    # clients and proxies
    "Client": _client,
    "ClientCreate": {"name": "Sales", "transport": "sim", "config": {"scan_after_ms": 1000}, "limits": LIMITS},
    "ClientUpdate": {"name": "Sales EU", "limits": {"per_minute": 10}},
    "Qr": {"qr": "2@k9LxQ0cJ5u8bRZr3sT1vW4yN6mP,AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/=,1a2b3c4d5e6f",
           "expires_at": "2026-11-26T09:30:20+00:00"},
    "SimInbound": {"from": "+14155550123", "text": "Hi, is my order on its way?"},
    "SimInboundResult": {"external_id": "sim-3f9c2d1e"},
    "SimFault": {"type": "fail_next", "count": 2, "permanent": False},
    "SimNetwork": {"received": 12, "distinct": 12, "duplicates": 0,
                   "faults": {"banned": False, "refuse_reconnects": 0, "fail_next": 2, "fail_next_permanent": False}},
    "Proxy": _proxy,
    "ProxyCreate": {"name": "Office proxy", "scheme": "socks5", "host": "proxy.acme.test", "port": 1080,
                    "username": "wa", "password": "s3cret-proxy-pass"},
    "ProxyUpdate": {"port": 1081},
    "Received": {"messages": 1, "statuses": 2, "errors": 0, "skipped": 0},
    # contacts and messages
    "Contact": _contact,
    "ContactCreate": {"phone": "+14155550123", "name": "Grace Hopper", "tags": ["customer", "vip"],
                      "attributes": {"plan": "pro"}},
    "ContactUpdate": {"tags": ["customer"], "opted_out": False},
    "SendMessage": {"to": "+14155550123", "message": "Your order has shipped"},
    "SendMessageResult": {"messageId": MESSAGE, "id": MESSAGE, "status": "queued"},
    "Message": _message,
    "MessageCreate": {"client_id": CLIENT, "to": "+14155550123", "type": "text", "text": "Your order has shipped"},
    "BatchCreate": {"client_id": CLIENT, "messages": [
        {"to": "+14155550123", "text": "Your order has shipped"},
        {"to": "not a number", "text": "This one is refused on its own"}]},
    "BatchResult": {"messages": [
        {"id": MESSAGE, "status": "queued", "scheduled_for": T1},
        {"error": {"code": "validation_error", "message": "Validation failed",
                   "details": {"to": ["Must be a phone number in E.164 (+14155550123)."]}}}]},
    # webhooks
    "Webhook": _webhook,
    "WebhookWithSecret": {**_webhook, "secret": "whsec_MfKQ9r8GKYqXvcqpdjtbr0dD3cBvhgaXxO6JpKk1M2c="},
    "WebhookCreate": {"url": "https://hooks.acme.test/whatsapp", "events": ["message.sent", "message.received"],
                      "description": "CRM"},
    "WebhookUpdate": {"events": ["*"], "enabled": True},
    "WebhookTestResult": {"event_id": EVENT, "delivery_id": DELIVERY, "type": "webhook.test"},
    "DeliveryAttempt": _attempt,
    "Delivery": {"id": DELIVERY, "webhook_id": WEBHOOK, "event_id": EVENT, "event_type": "message.sent",
                 "status": "succeeded", "attempt": 1, "next_attempt_at": None, "last_status_code": 200,
                 "last_error": None, "delivered_at": T1, "created_at": T0, "updated_at": T1,
                 "attempts": [_attempt]},
    # automations
    "Automation": _automation,
    "AutomationCreate": {"name": "After hours", "trigger": {"type": "outside_hours", "hours": _hours},
                         "action": {"type": "reply", "message": "Hi {{contact.name}}, we open at 09:00."},
                         "cooldown_seconds": 3600},
    "AutomationUpdate": {"enabled": False},
    "AutomationRun": {"id": 4711, "automation_id": AUTOMATION, "status": "fired", "reason": None,
                      "trigger_message_id": "msg_01JDQ51A9B8C7D6E5F4G3H2J1K", "reply_message_id": MESSAGE,
                      "contact_id": CONTACT, "client_id": CLIENT, "created_at": T1,
                      "actions": [{"type": "reply", "status": "done", "detail": None, "message_id": MESSAGE},
                                  {"type": "tag", "status": "done", "detail": None, "message_id": None}]},
    # system
    "Template": _template,
    "TemplateCreate": {k: _template[k] for k in ("name", "language", "category", "body", "header", "footer", "buttons")}
    | {"examples": {"name": "Ann", "order": "A-1001"}},
    "TemplateUpdate": {"footer": "Thanks for shopping with us"},
    "Preview": {"contact_id": CONTACT, "variables": {"order": "A-1001"}},
    "PreviewResult": {"text": "*Order A-1001*\n\nHi Grace, your order A-1001 is on its way.\n\nReply STOP to opt out"
                              "\n\n[Track] https://shop.acme.test/track/A-1001",
                      "body": "Hi Grace, your order A-1001 is on its way.", "header": "Order A-1001",
                      "footer": "Reply STOP to opt out",
                      "buttons": [{"type": "url", "text": "Track", "url": "https://shop.acme.test/track/A-1001"}],
                      "variables": {"order": "A-1001", "name": "Grace"}},
    "Submit": {"client_ids": [CLIENT]},
    "Campaign": _campaign,
    "CampaignCreate": {"name": "Spring sale", "client_ids": [CLIENT], "template_id": TEMPLATE,
                       "variables": {"order": "SPRING"}, "recipient_variables": {"+14155550123": {"order": "VIP"}},
                       "audience": {"tags": ["vip"], "exclude_tags": ["staff"]}, "scheduled_at": T0,
                       "send_window": {"start": "09:00", "end": "20:00"}, "frequency_cap": {"max": 1, "hours": 24}},
    "CampaignUpdate": {"name": "Spring sale (EU)", "audience": {"tags": ["vip"], "attributes": {"region": "eu"}}},
    "Eta": _eta,
    "TestSend": {"to": "+14155550123"},
    "Recipient": {"id": 81723, "contact_id": CONTACT, "phone": "+14155550123", "name": "Grace Hopper",
                  "client_id": CLIENT, "message_id": MESSAGE, "status": "read", "reason": None, "replied_at": T1,
                  "created_at": T0, "updated_at": T1},
    "Overview": {"from": "2026-11-19T00:00:00+00:00", "to": "2026-11-26T00:00:00+00:00", "sent": 1200,
                 "delivered": 1150, "read": 870, "failed": 18, "received": 430, "replied": 310, "opted_out": 4,
                 "delivery_rate": 0.9583, "read_rate": 0.725, "reply_rate": 0.2583, "avg_response_seconds": 312.5,
                 "p90_response_seconds": 905.0, "avg_delivery_seconds": 2.4, "avg_read_seconds": 1840.0,
                 "top_failures": [{"code": "131026", "count": 12}, {"code": "131049", "count": 6}]},
    "Breakdown": {"by": "client", "from": "2026-11-19T00:00:00+00:00", "to": "2026-11-26T00:00:00+00:00", "rows": [
        {"id": CLIENT, "name": "Support line", "sent": 1200, "delivered": 1150, "read": 870, "failed": 18,
         "received": 430, "replied": 310, "opted_out": 4, "delivery_rate": 0.9583, "read_rate": 0.725,
         "reply_rate": 0.2583, "avg_response_seconds": 312.5, "p90_response_seconds": 905.0,
         "avg_delivery_seconds": 2.4, "avg_read_seconds": 1840.0}]},
    "Timeseries": {"metric": "sent", "granularity": "day", "tz": "Europe/Paris", "points": [
        {"at": "2026-11-24T00:00:00+01:00", "value": 180}, {"at": "2026-11-25T00:00:00+01:00", "value": 0}]},
    "Health": {"status": "ok", "checks": {
        "database": {"status": "ok", "latency_ms": 0.8}, "redis": {"status": "ok", "latency_ms": 0.3},
        "workers": {"status": "ok",
                    "pools": {name: {"status": "ok", "live": 1}
                              for name in ("messages", "sessions", "webhooks", "default")},
                    "scheduler": {"status": "ok", "processes": 1}}}},
}


def example_for(schema_name: str) -> dict | None:
    """The example of ``schema_name`` (a copy), or None when there is none."""
    if schema_name.endswith("Page") and schema_name[:-4] in EXAMPLES:
        return {"items": [copy.deepcopy(EXAMPLES[schema_name[:-4]])], "next_cursor": None}
    found = EXAMPLES.get(schema_name)
    return copy.deepcopy(found) if found is not None else None
