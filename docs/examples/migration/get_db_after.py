"""After: the middleware commits before the response starts."""

from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from starlette.middleware import Middleware

import uow
from uow.starlette import UnitOfWorkMiddleware, lifespan, provide_session


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine("sqlite:///get_db.db")
Base.metadata.create_all(engine)


# --8<-- [start:after]
uow.configure(engine)
app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware)], lifespan=lifespan())


@app.post("/users", status_code=201)
def create_user(
    email: str,
    db: Annotated[Session, Depends(provide_session)],  # instead of get_db
) -> dict[str, str]:
    db.add(User(email=email))  # a duplicate fails at COMMIT, before the 201: a 500 instead
    return {"email": email}


# --8<-- [end:after]
