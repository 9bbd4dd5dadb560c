"""Templates' ``{{placeholders}}``: which variables a template needs, its text with them, and the
values a contact gives (``{{name}}``, ``{{phone}}``, ``{{attributes.city}}``).

Placeholders are named (``{{first_name}}``) or positional (``{{1}}``, ``{{2}}``... as Meta numbers
them), never both in one template. The body, a text header and URL buttons may hold them.
"""
from __future__ import annotations

import re
from typing import Any

PLACEHOLDER = re.compile(r"{{\s*([A-Za-z0-9_.\-]+)\s*}}")


def placeholders_of(text: str | None) -> list[str]:
    """The distinct placeholder names in ``text``, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER.findall(text or "")))


def template_parts(template: Any) -> list[str]:
    """Every text of a template that may hold placeholders: text header, body, URL buttons."""
    header = getattr(template, "header", None) or {}
    parts = [header.get("text") if header.get("type") == "text" else None, template.body]
    parts += [b.get("url") for b in (getattr(template, "buttons", None) or []) if b.get("type") == "url"]
    return [p for p in parts if p]


def template_placeholders(template: Any) -> list[str]:
    """The variables a template needs: its placeholders (header, body, buttons), else its
    declared ``variables``."""
    found = list(dict.fromkeys(name for part in template_parts(template) for name in placeholders_of(part)))
    return found or list(template.variables or [])


def render_template(body: str, variables: dict) -> str:
    """``body`` with each ``{{name}}`` replaced by its variable (kept as written when missing)."""
    return PLACEHOLDER.sub(lambda m: str(variables.get(m.group(1), m.group(0))), body or "")


def render_text(template: Any, variables: dict) -> str:
    """What a template says as one text (the message's ``text``; what transports without templates
    send): the header in bold, the body, the footer, and the buttons' labels."""
    header = getattr(template, "header", None) or {}
    parts = []
    if header.get("type") == "text" and header.get("text"):
        parts.append(f"*{render_template(header['text'], variables)}*")
    parts.append(render_template(template.body, variables))
    if getattr(template, "footer", None):
        parts.append(template.footer)
    buttons = getattr(template, "buttons", None) or []
    if buttons:
        parts.append("\n".join(_button_line(b, variables) for b in buttons))
    return "\n\n".join(parts)


def _button_line(button: dict, variables: dict) -> str:
    if button.get("type") == "url":
        return f"[{button.get('text')}] {render_template(button.get('url', ''), variables)}"
    if button.get("type") == "phone":
        return f"[{button.get('text')}] {button.get('phone_number')}"
    return f"[{button.get('text')}]"


def missing_variables(template: Any, variables: dict) -> list[str]:
    """The template's variables that ``variables`` does not give."""
    return [name for name in template_placeholders(template) if name not in variables]


def contact_variables(contact: Any) -> dict[str, str]:
    """The values a contact gives to placeholders: ``name``, ``phone`` and ``attributes.<key>``
    (``contact.name`` etc. too), texts and numbers only."""
    values: dict[str, str] = {}
    if getattr(contact, "name", None):
        values["name"] = values["contact.name"] = contact.name
    if getattr(contact, "phone", None):
        values["phone"] = values["contact.phone"] = contact.phone
    values.update(attribute_variables(getattr(contact, "attributes", None)))
    return values


def attribute_variables(attributes: dict | None, *, booleans: bool = False) -> dict[str, str]:
    """A contact's attributes as ``attributes.<key>`` and ``contact.attributes.<key>`` values:
    texts and numbers (and, with ``booleans``, true / false)."""
    values: dict[str, str] = {}
    for key, value in (attributes or {}).items():
        if isinstance(value, bool):
            if booleans:
                values[f"attributes.{key}"] = values[f"contact.attributes.{key}"] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            values[f"attributes.{key}"] = values[f"contact.attributes.{key}"] = str(value)
    return values
