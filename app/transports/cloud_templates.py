"""Templates in Meta's terms: the components of a template send, and the definition submitted to
Meta's template manager. Our placeholders are named (``{{first_name}}``, ``{{attributes.city}}``) or
positional (``{{1}}``); Meta's named parameters are lowercase letters, digits and underscores, so a
name is mapped (``attributes_city``) both ways the same (``meta_parameter_name``)."""
from __future__ import annotations

import re
from typing import Any


def meta_parameter_name(name: str) -> str:
    """Our placeholder name as a Meta named parameter (lowercase letters, digits, underscores):
    ``attributes.city`` is ``attributes_city`` at Meta."""
    return re.sub(r"[^a-z0-9_]", "_", str(name).lower())


def _text_params(names: list[str], variables: dict, positional: bool) -> list[dict]:
    if positional:
        return [{"type": "text", "text": str(variables.get(n, ""))} for n in names]
    return [{"type": "text", "parameter_name": meta_parameter_name(n), "text": str(variables.get(n, ""))}
            for n in names]


def template_components(template: dict, parameter_format: str | None = None) -> list[dict]:
    """Meta ``components`` for a template send: given ones as they are, else a ``header``
    component (a text header's placeholder, or its media), a ``body`` one with a text parameter
    per body variable, and one per URL button with a placeholder. Variables named ``1``, ``2``...
    (or ``parameter_format`` ``positional``) are positional in that order; other names are
    Meta's named parameters. A template dict without its parts (``body_variables``) gives every
    variable to the body."""
    if template.get("components"):
        return list(template["components"])
    variables = template.get("variables") or {}
    names = list(template.get("body_variables") or variables)
    positional = parameter_format == "positional" or (
        parameter_format != "named" and all(str(n).isdigit() for n in variables or names))
    if positional and all(str(n).isdigit() for n in names):
        names.sort(key=lambda n: int(n))
    components: list[dict] = []
    header_names = template.get("header_variables") or []
    if header_names:
        components.append({"type": "header", "parameters": _text_params(header_names, variables, positional)})
    elif template.get("header_media") is not None:
        kind, obj = template["header_media"]
        components.append({"type": "header", "parameters": [{"type": kind, kind: obj}]})
    if names:
        components.append({"type": "body", "parameters": _text_params(names, variables, positional)})
    for index, button_names in sorted((template.get("button_variables") or {}).items()):
        components.append({"type": "button", "sub_type": "url", "index": str(index),
                           "parameters": _text_params(button_names, variables, True)})
    return components


META_BUTTON_TYPES = {"quick_reply": "QUICK_REPLY", "url": "URL", "phone": "PHONE_NUMBER"}


def template_definition(spec: dict) -> dict:
    """The body of ``POST /{waba_id}/message_templates`` for one of our templates (``spec``:
    name, language, category, body, header, footer, buttons, examples, positional)."""
    examples = spec.get("examples") or {}
    positional = bool(spec.get("positional"))

    def meta_text(text: str) -> str:
        if positional:
            return text
        return re.sub(r"{{\s*([A-Za-z0-9_.\-]+)\s*}}", lambda m: "{{" + meta_parameter_name(m.group(1)) + "}}", text)

    def example_of(name: str) -> str:
        return str(examples.get(name) or f"sample {name}")

    def names_in(text: str) -> list[str]:
        return list(dict.fromkeys(re.findall(r"{{\s*([A-Za-z0-9_.\-]+)\s*}}", text or "")))

    components: list[dict] = []
    header = spec.get("header") or {}
    if header.get("type") == "text":
        comp: dict[str, Any] = {"type": "HEADER", "format": "TEXT", "text": meta_text(header["text"])}
        names = names_in(header["text"])
        if names:
            comp["example"] = ({"header_text": [example_of(n) for n in names]} if positional else
                               {"header_text_named_params": [{"param_name": meta_parameter_name(n),
                                                              "example": example_of(n)} for n in names]})
        components.append(comp)
    elif header.get("type") in ("image", "video", "document"):
        components.append({"type": "HEADER", "format": header["type"].upper(),
                           **({"example": {"header_handle": [header["example_handle"]]}}
                              if header.get("example_handle") else {})})
    body: dict[str, Any] = {"type": "BODY", "text": meta_text(spec["body"])}
    names = names_in(spec["body"])
    if names:
        body["example"] = ({"body_text": [[example_of(n) for n in sorted(names, key=int)]]} if positional else
                           {"body_text_named_params": [{"param_name": meta_parameter_name(n),
                                                        "example": example_of(n)} for n in names]})
    components.append(body)
    if spec.get("footer"):
        components.append({"type": "FOOTER", "text": spec["footer"]})
    buttons = []
    for b in spec.get("buttons") or []:
        out = {"type": META_BUTTON_TYPES[b["type"]], "text": b["text"]}
        if b["type"] == "url":
            out["url"] = re.sub(r"{{\s*[A-Za-z0-9_.\-]+\s*}}", "{{1}}", b["url"])
            if names_in(b["url"]):
                out["example"] = [b["url"].split("{{")[0] + example_of(names_in(b["url"])[0])]
        elif b["type"] == "phone":
            out["phone_number"] = b["phone_number"]
        buttons.append(out)
    if buttons:
        components.append({"type": "BUTTONS", "buttons": buttons})
    return {"name": spec["name"], "language": spec["language"], "category": spec["category"].upper(),
            "parameter_format": "POSITIONAL" if positional else "NAMED", "components": components}
