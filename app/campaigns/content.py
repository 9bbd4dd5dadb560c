"""What one recipient of a campaign is sent: the campaign's text, or its template with the values
of the campaign's variables, the recipient map and the contact's fields."""
from __future__ import annotations

from typing import Any

from app.campaigns.models import Campaign
from app.templates.models import Template
from app.templates.rendering import contact_variables, placeholders_of, render_template, template_placeholders


def key_of(campaign_id: str, contact_id: str) -> str:
    """The idempotency key of a recipient's message."""
    return f"cmp_{campaign_id}_{contact_id}"


def item_for(campaign: Campaign, template: Template | None, phone: str, contact: Any) -> tuple[dict, list[str]]:
    """The message item of one recipient, and the placeholders it has no value for: a template's,
    or those of a plain message's text (``Hi {{name}}``), filled the same way."""
    names = template_placeholders(template) if template is not None else placeholders_of(campaign.message)
    per = campaign.recipient_variables or {}
    values = {**(contact_variables(contact) if contact is not None else {}), **(campaign.variables or {}),
              **(per.get(getattr(contact, "id", "")) or {}), **(per.get(phone) or {})} if names else {}
    values = {k: v for k, v in values.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    missing = [n for n in names if n not in values]
    if template is None:
        return {"to": phone, "type": "text", "text": render_template(campaign.message or "", values)}, missing
    return {"to": phone, "type": "template", "template_id": template.id,
            "variables": {n: values[n] for n in names if n in values}}, missing
