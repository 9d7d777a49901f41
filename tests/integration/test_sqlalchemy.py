"""SQLAlchemy 2 ORM over psycopg 3 (`postgresql+psycopg://`) through the real gateway."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

from tests.integration.conftest import Gateway, admin_conn


def models(suffix: str) -> tuple[type[DeclarativeBase], Any, Any]:
    """A fresh declarative base with uniquely named tables (the database is shared)."""

    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = f"sa_author_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(100), unique=True)
        email: Mapped[str | None]
        books: Mapped[list[Book]] = relationship(
            back_populates="author", cascade="all, delete-orphan", order_by="Book.id"
        )

    class Book(Base):
        __tablename__ = f"sa_book_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
        pages: Mapped[int] = mapped_column(default=0)
        author_id: Mapped[int] = mapped_column(sa.ForeignKey(f"sa_author_{suffix}.id"))
        author: Mapped[Author] = relationship(back_populates="books")

    return Base, Author, Book


def engine_for(gateway: Gateway, principal: str) -> sa.Engine:
    url = sa.URL.create(
        "postgresql+psycopg",
        username=principal,
        password=gateway.token(principal),
        host="127.0.0.1",
        port=gateway.port,
        database="it",
        query={"sslmode": "disable"},
    )
    return sa.create_engine(url, pool_size=2, max_overflow=0)


@pytest.fixture
def dev_engine(gateway: Gateway) -> Iterator[sa.Engine]:
    engine = engine_for(gateway, "dev")
    yield engine
    engine.dispose()


@pytest.fixture
def agent_engine(gateway: Gateway) -> Iterator[sa.Engine]:
    engine = engine_for(gateway, "agent")
    yield engine
    engine.dispose()


def test_orm_round_trip(dev_engine: sa.Engine, it_database: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    Base, Author, Book = models(suffix)
    Base.metadata.create_all(dev_engine)
    # create_all is idempotent: the second run only inspects the catalogue.
    Base.metadata.create_all(dev_engine)

    with Session(dev_engine) as session:
        ada = Author(name="Ada", email="ada@example.com")
        ada.books = [Book(title=f"Notes {i}", pages=10 * i) for i in range(1, 4)]
        grace = Author(name="Grace", books=[Book(title="COBOL", pages=300)])
        session.add_all([ada, grace])
        session.commit()
        ada_id = ada.id

    with Session(dev_engine) as session:
        author = session.scalars(
            sa.select(Author).where(Author.name == "Ada").options(selectinload(Author.books))
        ).one()
        assert [b.title for b in author.books] == ["Notes 1", "Notes 2", "Notes 3"]
        # The lazy relationship the other way round.
        book = session.scalars(sa.select(Book).where(Book.title == "COBOL")).one()
        assert book.author.name == "Grace"
        # Unit-of-work update: UPDATE ... WHERE id = ...
        author.email = "ada@lovelace.example"
        author.books[0].pages = 999
        session.commit()
        # Bulk update with a WHERE clause.
        result = session.execute(  # an UPDATE gives a CursorResult
            sa.update(Book)
            .where(Book.author_id == ada_id, Book.pages < 100)
            .values(pages=Book.pages + 1)
        )
        assert cast(sa.CursorResult[Any], result).rowcount == 2
        # Deleting through the relationship: DELETE ... WHERE id = ...
        author.books.pop()
        session.commit()
        totals = session.execute(
            sa.select(Author.name, sa.func.count(Book.id), sa.func.sum(Book.pages))
            .join(Book)
            .group_by(Author.name)
            .order_by(Author.name)
        ).all()
        assert [tuple(r) for r in totals] == [("Ada", 2, 999 + 21), ("Grace", 1, 300)]

    with admin_conn(it_database) as conn:
        row = conn.execute(
            f"select email from sa_author_{suffix} where id = %s", (ada_id,)
        ).fetchone()
        assert row == ("ada@lovelace.example",)


def test_orm_constraint_error_and_rollback(dev_engine: sa.Engine) -> None:
    suffix = uuid.uuid4().hex[:8]
    Base, Author, _ = models(suffix)
    Base.metadata.create_all(dev_engine)
    with Session(dev_engine) as session:
        session.add(Author(name="Same"))
        session.commit()
        session.add(Author(name="Same"))
        with pytest.raises(sa_exc.IntegrityError):
            session.commit()
        session.rollback()
        assert session.scalar(sa.select(sa.func.count()).select_from(Author)) == 1


def test_guardrail_blocks_orm_bulk_delete(dev_engine: sa.Engine, it_database: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    Base, Author, _ = models(suffix)
    Base.metadata.create_all(dev_engine)
    with Session(dev_engine) as session:
        session.add_all([Author(name="a"), Author(name="b")])
        session.commit()
        with pytest.raises(sa_exc.ProgrammingError) as info:
            session.execute(sa.delete(Author))
        assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege)
        assert "wardgate: blocked by guardrail:delete-needs-where" in str(info.value)
        session.rollback()
        session.execute(sa.delete(Author).where(Author.name == "a"))
        session.commit()
    with admin_conn(it_database) as conn:
        assert conn.execute(f"select name from sa_author_{suffix}").fetchall() == [("b",)]


def test_agent_orm_write_is_refused(
    dev_engine: sa.Engine, agent_engine: sa.Engine, it_database: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    Base, Author, Book = models(suffix)
    Base.metadata.create_all(dev_engine)
    with Session(dev_engine) as session:
        session.add(Author(name="Existing", books=[Book(title="Kept")]))
        session.commit()

    with Session(agent_engine) as session:
        # Reads work, relationships included.
        author = session.scalars(sa.select(Author)).one()
        assert [b.title for b in author.books] == ["Kept"]
        session.add(Author(name="Intruder"))
        with pytest.raises(sa_exc.ProgrammingError) as info:
            session.commit()
        assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege)
        assert "wardgate: blocked by role:reader" in str(info.value)
        session.rollback()
        author = session.scalars(sa.select(Author)).one()
        author.name = "Renamed"
        with pytest.raises(sa_exc.ProgrammingError, match="wardgate: blocked by role:reader"):
            session.commit()
        session.rollback()
        # The session is usable after the refusals.
        assert session.scalar(sa.select(sa.func.count()).select_from(Author)) == 1

    # Both the role and the no-drop guardrail refuse it; the guardrail is named first.
    with pytest.raises(
        sa_exc.ProgrammingError, match="wardgate: blocked by guardrail:no-drop, role:reader"
    ):
        Base.metadata.drop_all(agent_engine)

    with admin_conn(it_database) as conn:
        assert conn.execute(f"select name from sa_author_{suffix}").fetchall() == [("Existing",)]
