"""Least privilege upstream: what the role a connection dials with may do, said loudly.

The gate is the first line; the upstream role is the last. A policy mistake (a function
that writes, a setting the classifier misjudged) can only reach what that role may do,
so connections that agents use should dial a dedicated role with only the grants the
agents' work needs. `wardgate serve` checks each such connection once at start and logs
a warning for a superuser, a role that bypasses row-level security, or one that may read
or write server files or run programs, unless the configuration says it is intended
(``upstream.privileged: true``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from wardgate.postgres.internal import CATALOG_READER, internal_session

if TYPE_CHECKING:
    from wardgate.core.services import Services

log = logging.getLogger("wardgate.postgres")

_CHECK = """
SELECT r.rolsuper, r.rolbypassrls,
       pg_catalog.pg_has_role(current_user, 'pg_read_server_files', 'USAGE'),
       pg_catalog.pg_has_role(current_user, 'pg_write_server_files', 'USAGE'),
       pg_catalog.pg_has_role(current_user, 'pg_execute_server_program', 'USAGE'),
       current_user
FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
"""
_POWERS = (
    "is a superuser",
    "bypasses row-level security",
    "may read any file on the database server (pg_read_server_files)",
    "may write any file on the database server (pg_write_server_files)",
    "may run programs on the database server (pg_execute_server_program)",
)


def agent_connections(services: Services) -> list[str]:
    """Connections of type postgres on which an agent principal has a role."""
    config = services.config
    agent_groups = {g for p in config.principals.values() if p.kind == "agent" for g in p.groups}
    return [
        name
        for name, conn in config.connections.items()
        if conn.type == "postgres" and agent_groups & set(conn.roles)
    ]


async def warn_privileged_upstreams(services: Services) -> None:
    for name in agent_connections(services):
        if services.config.connections[name].pg.privileged:
            continue
        try:
            async with internal_session(
                services,
                name,
                application_name="wardgate-privilege-check",
                timeout=10,
                settings=CATALOG_READER,
            ) as session:
                result = await session.extended(_CHECK)
        except Exception as exc:  # noqa: BLE001 - a check, never a reason to stop serving
            log.info("connection %r: could not check its upstream role's privileges: %s", name, exc)
            continue
        if result.error is not None or not result.rows:
            continue
        row = result.rows[0]
        powers = [what for value, what in zip(row[:5], _POWERS, strict=True) if value == "t"]
        if powers:
            log.warning(
                "connection %r: agents reach the database as role %r, which %s. Whatever "
                "the policy misses, this role can do. Dial with a dedicated role holding only "
                "the grants the agents' work needs (docs/policy.md, least privilege), or set "
                "upstream.privileged: true on the connection if this is intended",
                name,
                row[5],
                "; ".join(powers),
            )
