"""Templates' reviews, per client that needs one before it sends a template.

``cloud`` clients need Meta's approval; ``sim`` clients with ``config.template_review`` get a
simulated one (``delay_s``, ``reject``, ``reject_names``); the others (``web``, plain ``sim``) send
any template as text. Creating or changing a template makes its rows ``pending`` and sends a
``templates.submit`` job per client after commit (``submit``); the job submits it through the
Graph API (``run_submit``), or the simulator decides after its delay (``run_sim_review``). Meta's
verdicts come back by the ``message_template_status_update`` webhook (``apply_meta_status``) and
the periodic ``templates.sync`` (``run_sync``). A send of a template that is not ``approved`` on
its client is refused at intake (``approval_problem``).
"""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app import outbox
from app.clients.info import client_info, load_client_info
from app.clients.models import Client
from app.db import job_session, scoped_select, utcnow
from app.templates.models import Template, TemplateApproval
from app.templates.statuses import META_STATUSES

log = logging.getLogger(__name__)

SUBMIT_ACTOR = "templates.submit"
SIM_REVIEW_ACTOR = "templates.sim_review"
DELETE_AT_META_ACTOR = "templates.delete_at_meta"


def needs_review(client: Client) -> bool:
    """Whether a template must be approved before ``client`` sends it."""
    return client.transport == "cloud" or (client.transport == "sim" and
                                            (client.config or {}).get("template_review") is not None)


def reviewed_clients(session: Session, organization_id: str) -> list[Client]:
    clients = session.scalars(scoped_select(Client, organization_id)
                              .where(Client.transport.in_(("cloud", "sim"))).order_by(Client.id)).all()
    return [c for c in clients if needs_review(c)]


def submit(session: Session, template: Template, clients: list[Client], *, examples: dict | None = None) -> None:
    """(Re)submit ``template`` for review on each of ``clients``: its rows become ``pending`` and a
    ``templates.submit`` job per client does the rest after commit."""
    clients = [c for c in clients if needs_review(c)]
    if not clients:
        return
    now = utcnow()
    stmt = insert(TemplateApproval).values([
        {"template_id": template.id, "client_id": c.id, "organization_id": template.organization_id,
         "status": "pending", "created_at": now, "updated_at": now} for c in clients])
    session.execute(stmt.on_conflict_do_update(
        index_elements=["template_id", "client_id"],
        set_={"status": "pending", "reason": None, "reviewed_at": None, "updated_at": now}))
    outbox.enqueue_many(session, SUBMIT_ACTOR, [(template.id, c.id, examples or {}) for c in clients])


def approval_problem(session: Session, client: Client, template: Template) -> str | None:
    """Why ``client`` may not send ``template`` now (None: it may)."""
    if not needs_review(client):
        return None
    approval = session.get(TemplateApproval, (template.id, client.id))
    where = "at Meta" if client.transport == "cloud" else "in the simulator"
    if approval is None:
        return (f"The template was never submitted for this client: POST /api/templates/{template.id}/submit "
                f"(review {where}).")
    if approval.status != "approved":
        reason = f": {approval.reason}" if approval.reason else ""
        return f"The template is {approval.status} {where} for this client{reason}."
    return None


def set_review(session: Session, template_id: str, client_id: str, status: str, *, reason: str | None = None,
               meta_template_id: str | None = None, submitted: bool = False) -> bool:
    """Record a review's outcome; False when there is no such review any more."""
    now = utcnow()
    values: dict = {"status": status, "reason": reason, "updated_at": now}
    if meta_template_id:
        values["meta_template_id"] = meta_template_id
    if submitted:
        values["submitted_at"] = now
    if status != "pending":
        values["reviewed_at"] = now
    result = session.execute(update(TemplateApproval).where(TemplateApproval.template_id == template_id,
                                                            TemplateApproval.client_id == client_id).values(**values))
    return bool(result.rowcount)  # type: ignore[attr-defined]  # an UPDATE's CursorResult


def submission(session: Session, template_id: str, client_id: str) -> tuple[Template, Client, TemplateApproval] | None:
    """What a ``templates.submit`` job works on, or None when it went away."""
    found = session.execute(select(Template, Client, TemplateApproval)
                            .join(TemplateApproval, TemplateApproval.template_id == Template.id)
                            .join(Client, Client.id == TemplateApproval.client_id)
                            .where(Template.id == template_id, Client.id == client_id,
                                   Template.deleted_at.is_(None), Client.deleted_at.is_(None))).first()
    return None if found is None else (found[0], found[1], found[2])


def spec_of(template: Template, approval: TemplateApproval, examples: dict | None = None) -> dict:
    """What the cloud transport submits (app/transports/cloud.py ``template_definition``)."""
    return {"name": template.name, "language": template.language, "category": template.category or "utility",
            "body": template.body, "header": template.header, "footer": template.footer,
            "buttons": template.buttons or [], "examples": examples or {},
            "positional": all(n.isdigit() for n in template.variables or []) and bool(template.variables),
            "meta_template_id": approval.meta_template_id}



def apply_meta_status(session: Session, client_id: str, value: dict) -> int:
    """A ``message_template_status_update`` (webhook) or a synced status for ``client_id``:
    ``{event|status, message_template_id|id, message_template_name|name, message_template_language|
    language, reason}``. Returns how many reviews changed."""
    status = META_STATUSES.get(str(value.get("event") or value.get("status") or "").lower())
    if status is None:
        return 0
    meta_id = str(value.get("message_template_id") or value.get("id") or "")
    name = value.get("message_template_name") or value.get("name")
    language = value.get("message_template_language") or value.get("language")
    reason = value.get("reason")
    reason = None if reason in (None, "", "NONE") else str(reason)[:500]
    match = TemplateApproval.meta_template_id == meta_id if meta_id else None
    if name:
        by_name = select(Template.id).where(Template.name == name, Template.deleted_at.is_(None),
                                            *([Template.language == language] if language else []))
        by_name_match = TemplateApproval.template_id.in_(by_name)
        match = by_name_match if match is None else or_(match, by_name_match)
    if match is None:
        return 0
    now = utcnow()
    result = session.execute(update(TemplateApproval).where(
        TemplateApproval.client_id == client_id, match,
        or_(TemplateApproval.status != status, TemplateApproval.reason.is_distinct_from(reason)))
        .values(status=status, reason=reason, reviewed_at=now, updated_at=now,
                **({"meta_template_id": meta_id} if meta_id else {})))
    return int(result.rowcount)  # type: ignore[attr-defined]  # an UPDATE's CursorResult


def clients_to_sync(session: Session) -> list[str]:
    """Cloud clients with a review (the periodic ``templates.sync``)."""
    return list(session.scalars(select(TemplateApproval.client_id).join(Client, Client.id == TemplateApproval.client_id)
                                .where(Client.transport == "cloud", Client.deleted_at.is_(None)).distinct()))


def sim_review_delay(client: Client) -> timedelta:
    review = (client.config or {}).get("template_review") or {}
    return timedelta(seconds=float(review.get("delay_s") or 0))


def sim_verdict(client: Client, template: Template) -> tuple[str, str | None]:
    """The simulator's verdict: ``config.template_review.reject`` (a reason, or true) rejects every
    template, or those whose name is in ``reject_names``; else approved."""
    review = (client.config or {}).get("template_review") or {}
    reject = review.get("reject")
    if reject or template.name in (review.get("reject_names") or []):
        return "rejected", reject if isinstance(reject, str) else "INVALID_FORMAT"
    return "approved", None


# ----------------------------------------------------------------------------- the jobs' bodies

def run_submit(template_id: str, client_id: str, examples: dict | None = None) -> str:
    """``templates.submit``: submit to Meta (cloud) or start the simulated review (sim). Returns the
    review's status. A Graph API error that a retry may cure is raised (the actor retries); any
    other leaves the review in ``error`` with Meta's reason."""
    from app.transports.base import SilentSink
    from app.transports.cloud import CloudTransport
    from app.transports.cloud_errors import GraphError

    with job_session() as session:
        found = submission(session, template_id, client_id)
        if found is None:
            return "gone"
        template, client, approval = found
        if client.transport == "sim":
            outbox.enqueue(session, SIM_REVIEW_ACTOR, template_id, client_id,
                           delay_ms=int(sim_review_delay(client).total_seconds() * 1000))
            set_review(session, template_id, client_id, "pending", submitted=True)
            return "pending"
        info = client_info(session, client)
        spec = spec_of(template, approval, examples)
    try:
        answer = CloudTransport(info, SilentSink()).submit_template(spec)
        status, reason, meta_id = (answer["status"] if answer["status"] in META_STATUSES.values() else "pending",
                                   None, answer.get("id"))
    except GraphError as exc:
        if exc.rule.retry:
            raise
        status, reason, meta_id = "error", f"{exc.rule.code}: {exc}"[:500], None
    with job_session() as session:
        set_review(session, template_id, client_id, status, reason=reason, meta_template_id=meta_id, submitted=True)
    return status


def run_sim_review(template_id: str, client_id: str) -> str:
    """``templates.sim_review``: the simulator's verdict, once its delay has passed."""
    with job_session() as session:
        found = submission(session, template_id, client_id)
        if found is None or found[2].status != "pending":
            return "gone" if found is None else found[2].status
        status, reason = sim_verdict(found[1], found[0])
        set_review(session, template_id, client_id, status, reason=reason)
        return status


def run_sync() -> int:
    """``templates.sync`` (periodic): every cloud client's template statuses from the Graph API,
    for a verdict whose webhook never came. Returns how many reviews changed."""
    from app.transports.base import SilentSink
    from app.transports.cloud import CloudTransport
    from app.transports.cloud_errors import GraphError

    with job_session() as session:
        client_ids = clients_to_sync(session)
    changed = 0
    for client_id in client_ids:
        with job_session() as session:
            info = load_client_info(session, client_id)
        try:
            statuses = CloudTransport(info, SilentSink()).template_statuses()
        except GraphError as exc:
            log.warning("template sync of client %s failed: %s", client_id, exc)
            continue
        with job_session() as session:
            for status in statuses:
                changed += apply_meta_status(session, client_id, status)
    return changed


def run_delete_at_meta(client_id: str, name: str) -> None:
    """``templates.delete_at_meta``: a deleted template goes from the WhatsApp Business Account too."""
    from app.transports.base import SilentSink
    from app.transports.cloud import CloudTransport
    from app.transports.cloud_errors import GraphError

    with job_session() as session:
        info = load_client_info(session, client_id)
    try:
        CloudTransport(info, SilentSink()).delete_template(name)
    except GraphError as exc:
        if exc.rule.retry:
            raise
        log.info("template %s of client %s not deleted at Meta: %s", name, client_id, exc)

