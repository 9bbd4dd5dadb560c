"""Message templates' ``{{placeholders}}``: which variables a template needs, and its text with them."""
from __future__ import annotations

import re

from app.templates.models import Template

PLACEHOLDER = re.compile(r"{{\s*([A-Za-z0-9_.\-]+)\s*}}")


def template_placeholders(template: Template) -> list[str]:
    """The variables a template needs: its ``{{name}}`` placeholders, else its declared ``variables``."""
    found = list(dict.fromkeys(PLACEHOLDER.findall(template.body or "")))
    return found or list(template.variables or [])


def render_template(body: str, variables: dict) -> str:
    """``body`` with each ``{{name}}`` replaced by its variable (kept as written when missing)."""
    return PLACEHOLDER.sub(lambda m: str(variables.get(m.group(1), m.group(0))), body or "")
