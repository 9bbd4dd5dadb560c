"""Organisations and their people: users, roles and which clients an agent may use.

Role rules (API.md "Team"): nobody creates, promotes, changes or removes a user whose role is
above their own, nor grants a role above their own; nobody changes their own role or status;
an organisation always keeps at least one active admin.

Users returned by this module carry ``client_ids`` (a plain attribute, not a column): the
clients assigned to an agent, ``None`` for the other roles, who may use every client.
"""
from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app import quotas
from app.audit.service import diff, record
from app.db import get_scoped, scoped_select, utcnow
from app.errors import Conflict, Forbidden, NotFound, ValidationError
from app.pagination import paginate
from app.security.passwords import check_policy, hash_password
from app.security.principal import Principal
from app.team.models import Organization, OrganizationSettings, User, UserClient

MAX_ASSIGNED_CLIENTS = 1000


def normalise_email(email: str) -> str:
    email = (email or "").strip()
    if "@" not in email or len(email) > 254 or email.startswith("@") or email.endswith("@"):
        raise ValidationError(details={"email": ["Not a valid email address."]})
    local, domain = email.rsplit("@", 1)
    return f"{local}@{domain.lower()}"


def email_taken(session: Session, email: str, *, except_user_id: str | None = None) -> bool:
    stmt = select(func.count()).select_from(User).where(
        func.lower(User.email) == email.lower(), User.deleted_at.is_(None))
    if except_user_id:
        stmt = stmt.where(User.id != except_user_id)
    return session.scalar(stmt) > 0


def find_user_by_email(session: Session, email: str) -> User | None:
    """The (not deleted) user with this email, whatever its organisation: emails are unique."""
    return session.scalars(select(User).where(func.lower(User.email) == email.strip().lower(),
                                              User.deleted_at.is_(None))).first()


def checked_organization_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValidationError(details={"organization": ["Give a name of 1 to 200 characters."]})
    return name


def create_organization(session: Session, *, name: str, admin_email: str, admin_password: str | None = None,
                        admin_password_hash: str | None = None, admin_name: str = "Admin",
                        signup: bool = False) -> tuple[Organization, User]:
    """A new organisation with its settings row and its first admin (``admin_password``, or its
    bcrypt hash already made). ``signup``: the new admin is the audited actor (self-service
    sign-up) rather than the platform (CLI)."""
    name = checked_organization_name(name)
    email = normalise_email(admin_email)
    if admin_password_hash is None:
        check_policy(admin_password, email, admin_name)
        admin_password_hash = hash_password(admin_password)
    if email_taken(session, email):
        raise Conflict("A user with this email already exists", code="email_taken", details={"email": [email]})
    org = Organization(name=name)
    session.add(org)
    session.flush()
    session.add(OrganizationSettings(organization_id=org.id))
    user = User(organization_id=org.id, email=email, name=(admin_name or "Admin").strip()[:200] or "Admin",
                password_hash=admin_password_hash, role="admin")
    session.add(user)
    session.flush()
    actor = {"actor_type": "user", "actor_id": user.id} if signup else {}
    record(session, None, "organization.create", organization_id=org.id, target_type="organization",
           target_id=org.id, changes={"name": name, "admin_email": email, "signup": signup}, **actor)
    record(session, None, "user.create", organization_id=org.id, target_type="user", target_id=user.id,
           changes={"email": email, "name": user.name, "role": "admin"}, **actor)
    return org, user


# ----------------------------------------------------------------------------- reading


def with_client_ids(session: Session, users: list[User]) -> list[User]:
    """Set ``client_ids`` on each user: the assigned clients of agents (one query), else None."""
    agents = [u.id for u in users if u.role == "agent"]
    assigned: dict[str, list[str]] = {uid: [] for uid in agents}
    if agents:
        for user_id, client_id in session.execute(
                select(UserClient.user_id, UserClient.client_id).where(UserClient.user_id.in_(agents))
                .order_by(UserClient.client_id)):
            assigned[user_id].append(client_id)
    for u in users:
        u.client_ids = assigned.get(u.id) if u.role == "agent" else None
    return users


def list_users(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
               role: str | None = None, status: str | None = None) -> dict:
    stmt = scoped_select(User, principal.organization_id)
    if role:
        stmt = stmt.where(User.role == role)
    if status:
        stmt = stmt.where(User.status == status)
    page = paginate(session, stmt, User.id, limit=limit, cursor=cursor)
    with_client_ids(session, page["items"])
    return page


def get_user(session: Session, principal: Principal, user_id: str) -> User:
    user = get_scoped(session, User, principal.organization_id, user_id)
    return with_client_ids(session, [user])[0]


# ----------------------------------------------------------------------------- writing


def _check_may_grant(principal: Principal, role: str) -> None:
    if not principal.outranks_or_equals(role):
        raise Forbidden(f"You cannot grant the role {role!r}, which is above your own ({principal.role})",
                        code="role_above_own", details={"role": [f"At most {principal.role}."]})


def _check_may_manage(principal: Principal, user: User) -> None:
    if not principal.outranks_or_equals(user.role):
        raise Forbidden(f"You cannot change a user whose role ({user.role}) is above your own ({principal.role})",
                        code="role_above_own")


def _is_active_admin(user: User) -> bool:
    return user.role == "admin" and user.status == "active" and user.deleted_at is None


def _lock_active_admins(session: Session, organization_id: str) -> list[str]:
    """Lock the organisation's active admins, in id order, before any other user row: two admins
    demoting or removing each other at once then queue up instead of both succeeding (or
    deadlocking), and the second one sees the first one's change."""
    return list(session.scalars(
        select(User.id).where(User.organization_id == organization_id, User.role == "admin",
                              User.status == "active", User.deleted_at.is_(None))
        .order_by(User.id).with_for_update()))


def _ensure_another_admin(admins: list[str], user: User) -> None:
    """Refuse to take ``user`` out of the active admins when it is the last one."""
    if user.id in admins and len(admins) <= 1:
        raise Conflict("An organisation keeps at least one active admin: promote another user first",
                       code="last_admin")


def create_user(session: Session, principal: Principal, *, email: str, name: str, password: str, role: str) -> User:
    _check_may_grant(principal, role)
    email = normalise_email(email)
    name = (name or "").strip()
    if not name:
        raise ValidationError(details={"name": ["Must not be blank."]})
    check_policy(password, email, name)
    if email_taken(session, email):
        raise Conflict("A user with this email already exists", code="email_taken", details={"email": [email]})
    quotas.enforce(session, principal.organization_id, "users", User, User.deleted_at.is_(None))
    user = User(organization_id=principal.organization_id, email=email, name=name, role=role,
                password_hash=hash_password(password))
    session.add(user)
    session.flush()
    record(session, principal, "user.create", target_type="user", target_id=user.id,
           changes={"email": email, "name": name, "role": role})
    return with_client_ids(session, [user])[0]


def update_user(session: Session, principal: Principal, user_id: str, *, name: str | None = None,
                email: str | None = None, role: str | None = None, status: str | None = None,
                password: str | None = None) -> User:
    admins = _lock_active_admins(session, principal.organization_id) if (role or status) else []
    user = get_scoped(session, User, principal.organization_id, user_id, for_update=True)
    _check_may_manage(principal, user)
    is_self = principal.kind == "user" and principal.id == user.id
    fields: dict = {}
    if name is not None:
        if not name.strip():
            raise ValidationError(details={"name": ["Must not be blank."]})
        fields["name"] = name.strip()
    if email is not None:
        email = normalise_email(email)
        if email.lower() != user.email.lower() and email_taken(session, email, except_user_id=user.id):
            raise Conflict("A user with this email already exists", code="email_taken", details={"email": [email]})
        fields["email"] = email
    if role is not None and role != user.role:
        if is_self:
            raise ValidationError("You cannot change your own role",
                                  details={"role": ["You cannot change your own role."]})
        _check_may_grant(principal, role)
        fields["role"] = role
    if status is not None and status != user.status:
        if is_self:
            raise ValidationError("You cannot change your own status",
                                  details={"status": ["You cannot change your own status."]})
        fields["status"] = status
    if _is_active_admin(user) and (fields.get("role", "admin") != "admin"
                                   or fields.get("status", "active") != "active"):
        _ensure_another_admin(admins, user)
    changes = diff(user, fields)
    if password is not None:
        check_policy(password, fields.get("email", user.email), fields.get("name", user.name))
    for key, value in fields.items():
        setattr(user, key, value)
    if password is not None:
        user.password_hash = hash_password(password)
        changes["password_changed"] = True  # the fact, never the value
    if changes:
        user.updated_at = utcnow()
        session.flush()
        record(session, principal, "user.update", target_type="user", target_id=user.id, changes=changes)
        if "role" in changes:
            record(session, principal, "user.role_change", target_type="user", target_id=user.id,
                   changes={"role": changes["role"]})
    from app.auth.sessions import revoke_user_sessions
    from app.security.auth import forget_keys_of

    if "role" in fields or "status" in fields:
        forget_keys_of(session, user.id)  # their keys act with at most the new role, or not at all
    if fields.get("status") == "disabled":
        revoke_user_sessions(session, user.id, "user_disabled")
    elif password is not None and not is_self:
        revoke_user_sessions(session, user.id, "password_changed")
    if "role" in fields and fields["role"] != "agent":
        session.execute(delete(UserClient).where(UserClient.user_id == user.id))
    return with_client_ids(session, [user])[0]


def delete_user(session: Session, principal: Principal, user_id: str) -> None:
    """Soft delete: the row stays for the audit trail and its email becomes free again."""
    admins = _lock_active_admins(session, principal.organization_id)
    user = get_scoped(session, User, principal.organization_id, user_id, for_update=True)
    _check_may_manage(principal, user)
    if _is_active_admin(user):
        _ensure_another_admin(admins, user)
    user.deleted_at = user.updated_at = utcnow()
    user.status = "disabled"
    session.execute(delete(UserClient).where(UserClient.user_id == user.id))
    from app.apikeys.service import revoke_keys_of
    from app.auth.sessions import revoke_user_sessions

    revoke_user_sessions(session, user.id, "admin")
    revoke_keys_of(session, principal, user.id, "creator_deleted")
    session.flush()
    record(session, principal, "user.delete", target_type="user", target_id=user.id,
           changes={"email": user.email, "role": user.role})


def set_user_clients(session: Session, principal: Principal, user_id: str, client_ids: list[str]) -> User:
    """Replace the clients an agent may use. Every id must be a client of the organisation."""
    from app.clients.models import Client

    user = get_scoped(session, User, principal.organization_id, user_id, for_update=True)
    _check_may_manage(principal, user)
    if user.role != "agent":
        raise Conflict(f"Only agents are assigned clients; this user is {user.role} and may use every client",
                       code="not_an_agent")
    wanted = list(dict.fromkeys(client_ids))
    if len(wanted) > MAX_ASSIGNED_CLIENTS:
        raise ValidationError(details={"client_ids": [f"At most {MAX_ASSIGNED_CLIENTS} clients."]})
    found = set(session.scalars(scoped_select(Client, principal.organization_id)
                                .with_only_columns(Client.id).where(Client.id.in_(wanted)))) if wanted else set()
    missing = [c for c in wanted if c not in found]
    if missing:
        raise NotFound("client not found", details={"client_ids": missing})
    before = set(session.scalars(select(UserClient.client_id).where(UserClient.user_id == user.id)))
    removed, added = before - set(wanted), [c for c in wanted if c not in before]
    if removed:
        session.execute(delete(UserClient).where(UserClient.user_id == user.id, UserClient.client_id.in_(removed)))
    for client_id in added:
        session.add(UserClient(user_id=user.id, client_id=client_id, organization_id=user.organization_id))
    session.flush()
    if removed or added:
        record(session, principal, "user.assign_clients", target_type="user", target_id=user.id,
               changes={"client_ids": {"from": sorted(before), "to": sorted(wanted)}})
    return with_client_ids(session, [user])[0]
