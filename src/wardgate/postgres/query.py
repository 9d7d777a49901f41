"""Running one already-judged SQL action for a caller that is not a PostgreSQL client
(an MCP tool call): on a gateway session of its own, rows capped and masked exactly as
a PostgreSQL client of the same principal would see them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wardgate.identity.principals import Principal
from wardgate.postgres.backends import Backend
from wardgate.postgres.catalog import ColumnNames
from wardgate.postgres.catalog_watch import CatalogWatch, changing_catalogue
from wardgate.postgres.commit_barrier import CancelTo
from wardgate.postgres.internal import (
    InternalQueryFailed,
    InternalSession,
    Result,
    internal_session,
)
from wardgate.postgres.mask_catalog import CatalogUnavailable, MaskCatalogs
from wardgate.postgres.mask_path import SessionPaths
from wardgate.postgres.mask_rewrite import Refused, UnknownRelation
from wardgate.postgres.masking import IP_TYPES
from wardgate.postgres.upstream import NAMES_SQL

if TYPE_CHECKING:
    from wardgate.core.services import Services
    from wardgate.masking.masker import Masker
    from wardgate.policy.mask_rules import SessionMasking


class QueryFailed(Exception):
    """The statement failed on the server, or the server could not be reached. The
    message is the server's (masked) or the gateway's, safe to show the caller."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(frozen=True, slots=True)
class Answer:
    command: str
    row_count: int | None
    columns: list[str]
    rows: list[list[str | None]]
    truncated: bool


async def run_sql(
    services: Services,
    principal: Principal,
    connection: str,
    sql: str,
    params: tuple[str | None, ...],
    *,
    max_rows: int,
    seconds: float,
    granted: frozenset[str] = frozenset(),
    changes: bool = False,
    flight: QueryFlight,
) -> Answer:
    """Run ``sql`` (with text ``params``, through the extended protocol when there are
    any) and return its last result, masked for ``principal``. ``changes``: the verdict
    says it may change the catalogue (`changes_catalogue`). Raises QueryFailed."""
    read_only = not granted and services.gate.read_only_session(principal.groups, connection)
    masking = services.masking.for_session(principal, connection)
    flight.draining = changes  # until its drain is done and its session open
    try:
        async with (
            changing_catalogue(services, connection, changes, besides=flight, since=flight.judged),
            internal_session(
                services,
                connection,
                application_name="wardgate-mcp",
                timeout=seconds,
                max_rows=max_rows,
                read_only=read_only,
            ) as session,
        ):
            if masking is not None and masking.column_rules:
                # Unqualified names mean what this session's search_path says.
                names = await session.extended(NAMES_SQL)
                paths = SessionPaths(unknown=True)
                if names.error is None and len(names.rows) == 1:
                    paths = SessionPaths(str(names.rows[0][0]), str(names.rows[0][1]))
                sql = await _rewritten(services, connection, sql, masking, paths)
            flight.cancel_to, flight.session, flight.draining = session.cancel_to, session, False
            flight.backend = session.backend
            if params:
                results = [await session.extended(sql, params)]
            else:
                results = await session.simple(sql)
    except InternalQueryFailed as exc:
        raise QueryFailed(exc.reason, exc.sqlstate) from None
    for result in results:
        if result.error is not None:
            message = result.error.message
            if masking is not None:
                message = masking.mask_text(message)
            raise QueryFailed(message, result.error.sqlstate)
    last = results[-1] if results else Result()
    rows = [list(r) for r in last.rows]
    if masking is not None:
        rows = await _masked(services, connection, last, rows, masking)
    return Answer(last.command, last.count, list(last.columns), rows, last.truncated)


class QueryFlight:
    """An MCP query in flight, as the commit barrier sees it (commit_barrier.Flight):
    registered before it is judged, it leaves once its server session can run nothing
    more (`InternalSession.close`: the server closed the connection)."""

    session_id = "mcp"

    def __init__(self, connection: str) -> None:
        self.connection = connection
        self.cancel_to: CancelTo | None = None
        self.backend: Backend | None = None
        self.session: InternalSession | None = None
        self.judged = 0  # when the gate judged it (time.monotonic_ns)
        # Waiting for its own drain (it may change the catalogue: `changing_catalogue`),
        # as a relay's held batch: drains of what was judged before it do not wait for
        # it (two such queries waited for each other until one was refused, its
        # approval used up: attack14n).
        self.draining = False

    def flight(self, before: int) -> tuple[int, int]:
        if self.draining and self.judged >= before:
            return 0, 0
        return 1, 0  # in flight until it leaves

    def nudge(self) -> None:
        """Nothing to do: its session never leaves a batch open."""

    def closing(self) -> asyncio.Future[None] | None:
        return self.session.closed if self.session is not None else None


async def _rewritten(
    services: Services, connection: str, sql: str, masking: SessionMasking, paths: SessionPaths
) -> str:
    """The same column rewrite a PostgreSQL client of this principal gets."""
    catalogs = services.state(MaskCatalogs)
    try:
        await catalogs.get(services, connection)
        return catalogs.rewrite(connection, sql, masking.column_rules, paths) or sql
    except CatalogUnavailable as exc:
        raise QueryFailed(
            "wardgate: masking rules on columns need the catalog of this connection, which "
            f"could not be read ({exc}); nothing was run",
            "58000",
        ) from None
    except Refused as exc:
        if isinstance(exc, UnknownRelation):
            services.state(CatalogWatch).missed(connection)
        raise QueryFailed(
            f"wardgate: blocked by masking rule {exc.rule!r}: {exc.reason}", "42501"
        ) from None


async def _masked(
    services: Services,
    connection: str,
    result: Result,
    rows: list[list[str | None]],
    masking: SessionMasking,
) -> list[list[str | None]]:
    """Column rules by the columns' real names (from the catalog), content detectors on
    every other value; inet/cidr values are hidden when IPs are masked, as on the wire."""
    whole: dict[int, Masker] = {}
    if masking.columns:
        oids = {f.table_oid for f in result.fields if f.table_oid}
        names = services.state(ColumnNames).known(connection, oids) if oids else {}
        if names is None:
            try:
                await services.state(ColumnNames).fetch(services, connection, oids)
            except Exception as exc:  # noqa: BLE001 - any failure: fail closed
                raise QueryFailed(
                    "wardgate: masking rules need this result's column names and the gateway "
                    f"could not look them up ({exc}); nothing was returned",
                    "58000",
                ) from None
            names = services.state(ColumnNames).known(connection, oids) or {}
        for i, f in enumerate(result.fields):
            qualified = names.get((f.table_oid, f.attnum))
            masker = masking.column_masker(qualified) if qualified else None
            if masker is not None:
                whole[i] = masker
    hidden = {
        i for i, f in enumerate(result.fields) if masking.masks_ips and f.type_oid in IP_TYPES
    }
    out = []
    for row in rows:
        masked: list[str | None] = []
        for i, value in enumerate(row):
            if value is None:
                masked.append(None)
            elif i in hidden:
                masked.append(None)
            elif i in whole:
                masked.append(whole[i].mask_whole(value))
            else:
                masked.append(masking.mask_text(value))
        out.append(masked)
    return out
