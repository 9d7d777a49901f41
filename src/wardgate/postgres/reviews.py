"""The PostgreSQL side of reviews: impact previews for reviewers, checking a proposal
before it is filed, and running an approved proposal with the gateway's credentials.
``register`` wires them into the process at startup."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from wardgate.actions import Action, Decision, Verdict
from wardgate.core.proposals import statement_verdicts
from wardgate.postgres.preview import impact_preview
from wardgate.postgres.proposal import proposal_refusal, run_proposal
from wardgate.reviews.model import ReviewInfo
from wardgate.reviews.service import ReviewService
from wardgate.reviews.waiting import ReviewRuntime

if TYPE_CHECKING:
    from wardgate.core.services import Services

log = logging.getLogger("wardgate.reviews")


def register(services: Services, service: ReviewService, runtime: ReviewRuntime) -> None:
    """Previews of held statements, running approved proposals, and the check of SQL
    proposals before they are filed, for this process."""
    jobs = PgReviewJobs(services, service)
    runtime.previewer = jobs.preview
    runtime.on_proposal_approved = jobs.run_proposal
    services.proposal_checks["sql"] = proposal_refusal


class PgReviewJobs:
    def __init__(self, services: Services, service: ReviewService) -> None:
        self.services = services
        self.service = service

    async def preview(self, review: ReviewInfo, action: Action, verdict: Verdict) -> None:
        conn = self.services.config.connections.get(review.connection)
        if conn is None or conn.reviews.preview == "none" or action.protocol != "postgres":
            return
        try:
            result = await impact_preview(
                self.services,
                review.connection,
                action.judged_text,
                action.params,
                verdict.statements,
                conn.reviews.preview,
                conn.reviews.preview_timeout,
                dict(action.context),
            )
            await asyncio.to_thread(self.service.set_preview, review.id, result)
        except Exception:
            log.exception("impact preview of review %s failed", review.id)

    async def run_proposal(self, review: ReviewInfo) -> None:
        if not await asyncio.to_thread(self.service.consume, review.id, executing=True):
            return  # another process took it, or it expired
        statements = [str(s) for s in review.detail.get("statements", [])]
        refused = self._refused_now(review, statements)
        if refused is not None:
            ok, result = False, refused
        else:
            try:
                ok, result = await run_proposal(self.services, review.connection, statements)
            except Exception as exc:
                log.exception("proposal %s failed to run", review.id)
                ok, result = False, {"ok": False, "error": f"the gateway could not run it: {exc}"}
        await asyncio.to_thread(self.service.record_result, review.id, ok, result)

    def _refused_now(self, review: ReviewInfo, statements: list[str]) -> dict[str, Any] | None:
        """The policy of this moment still applies: a statement blocked since the
        proposal was filed stops the whole proposal before anything runs."""
        config = self.services.config
        principal = config.principal(review.principal)
        if principal is None or review.connection not in config.connections:
            return {
                "ok": False,
                "committed": False,
                "error": "the proposer or the connection is no longer configured; nothing was run",
            }
        verdicts = statement_verdicts(self.services, principal, review.connection, statements)
        for i, verdict in enumerate(verdicts):
            if verdict.decision is Decision.BLOCK and verdict.enforced:
                return {
                    "ok": False,
                    "committed": False,
                    "statements": [],
                    "error": {
                        "index": i,
                        "sqlstate": "42501",
                        "message": f"blocked by {', '.join(verdict.rules)}: {verdict.reason}; "
                        "nothing was run",
                    },
                }
        return None
