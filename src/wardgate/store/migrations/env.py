"""Alembic environment for the wardgate store.

Run only through ``Store.migrate()``, which passes an open connection already inside the
transaction (and holding the writer lock) in ``config.attributes["connection"]``. There is
no alembic.ini: the gateway builds its Alembic config in code.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from wardgate.store.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("wardgate migrations run through wardgate.store.db.Store.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite needs batch mode to ALTER tables in later revisions.
    render_as_batch=connection.dialect.name == "sqlite",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
