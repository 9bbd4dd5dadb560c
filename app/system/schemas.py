"""Response schemas of /health."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields


class CheckSchema(ma.Schema):
    status = fields.String(metadata={"description": "`ok` or `down`; for Redis also `full` (it refuses writes)"})
    latency_ms = fields.Float(metadata={"description": "When up: how long the check took."})
    memory_used_ratio = fields.Float(metadata={"description": "Redis with a memory limit: the share of it in use."})
    error = fields.String(metadata={"description": "When down: the kind of failure."})


class PoolSchema(ma.Schema):
    status = fields.String(metadata={"description": "`ok`, or `down` when no worker of the pool is alive"})
    live = fields.Integer(metadata={"description": "Live worker processes."})


class SchedulerSchema(ma.Schema):
    status = fields.String(metadata={"description": "`ok` when a scheduler leads, else `down`"})
    processes = fields.Integer()


class WorkersSchema(ma.Schema):
    status = fields.String(metadata={"description": "`ok`, `degraded` (a pool is down) or `unknown`"})
    pools = fields.Dict(keys=fields.String(), values=fields.Nested(PoolSchema),
                        metadata={"description": "By pool: messages, sessions, webhooks, default."})
    scheduler = fields.Nested(SchedulerSchema)
    error = fields.String()


class ChecksSchema(ma.Schema):
    database = fields.Nested(CheckSchema)
    redis = fields.Nested(CheckSchema)
    workers = fields.Nested(WorkersSchema)


class HealthSchema(ma.Schema):
    status = fields.String(metadata={"description": "`ok`, `degraded` (200) or `down` (503)"})
    checks = fields.Nested(ChecksSchema)
