"""Organisations and their people."""
from __future__ import annotations

from sqlalchemy import func, select

from app.audit.service import record
from app.errors import Conflict, ValidationError
from app.security.passwords import check_policy, hash_password
from app.team.models import Organization, OrganizationSettings, User

ROLES = ("admin", "manager", "agent", "viewer")


def normalise_email(email: str) -> str:
    email = (email or "").strip()
    if "@" not in email or len(email) > 254 or email.startswith("@") or email.endswith("@"):
        raise ValidationError(details={"email": ["Not a valid email address."]})
    local, domain = email.rsplit("@", 1)
    return f"{local}@{domain.lower()}"


def email_taken(session, email: str) -> bool:
    return session.scalar(select(func.count()).select_from(User).where(
        func.lower(User.email) == email.lower(), User.deleted_at.is_(None))) > 0


def create_organization(session, *, name: str, admin_email: str, admin_password: str,
                        admin_name: str = "Admin") -> tuple[Organization, User]:
    """A new organisation with its settings row and its first admin."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValidationError(details={"organization": ["Give a name of 1 to 200 characters."]})
    email = normalise_email(admin_email)
    check_policy(admin_password, email)
    if email_taken(session, email):
        raise Conflict("A user with this email already exists", code="email_taken", details={"email": [email]})
    org = Organization(name=name)
    session.add(org)
    session.flush()
    session.add(OrganizationSettings(organization_id=org.id))
    user = User(organization_id=org.id, email=email, name=(admin_name or "Admin").strip()[:200],
                password_hash=hash_password(admin_password), role="admin")
    session.add(user)
    session.flush()
    record(session, None, "organization.create", organization_id=org.id, target_type="organization",
           target_id=org.id, changes={"name": name, "admin_email": email})
    return org, user
