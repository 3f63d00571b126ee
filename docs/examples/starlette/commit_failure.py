"""The Starlette adapter: a commit that fails is answered 500, never 2xx.

Run it:  uvicorn commit_failure:app   (it writes commit_failure.db in the current directory)
"""

from fastapi import FastAPI, HTTPException
from sqlalchemy import String, create_engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.middleware import Middleware

import uow
from uow.starlette import UnitOfWorkMiddleware


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine("sqlite:///commit_failure.db")
Base.metadata.create_all(engine)
uow.configure(engine)
app = FastAPI(middleware=[Middleware(UnitOfWorkMiddleware)])


# --8<-- [start:late]
@app.post("/late", status_code=201)
def register_late(email: str) -> dict[str, str]:
    uow.session.add(User(email=email))  # no flush: the INSERT is sent at COMMIT
    return {"email": email}  # a duplicate fails at COMMIT: the client gets a 500


# --8<-- [end:late]


# --8<-- [start:early]
@app.post("/early", status_code=201)
def register_early(email: str) -> dict[str, int]:
    user = User(email=email)
    uow.session.add(user)
    try:
        uow.session.flush()  # the INSERT is sent now, inside the endpoint
    except IntegrityError:
        raise HTTPException(409, "email taken") from None  # a 4xx: the unit rolls back
    return {"id": user.id}


# --8<-- [end:early]
