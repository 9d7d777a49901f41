"""The UI's pages at /ui, for signed-in humans (sign-in itself is ``web/auth.py``).

Each page calls the REST API's handler functions with the signed-in human as the
caller, so visibility and segregation of duties have one implementation; a page only
turns answers into HTML and forms into calls.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from wardgate.web import pages_access, pages_reviews, pages_sessions

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("")
@router.get("/")
async def home() -> Response:
    return RedirectResponse("/ui/reviews", status_code=307)


router.include_router(pages_reviews.router)
router.include_router(pages_sessions.router)
router.include_router(pages_access.router)
