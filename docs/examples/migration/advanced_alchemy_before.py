"""Before: advanced-alchemy's Starlette plugin, commit_mode="autocommit".

The bug: its middleware commits after the app has sent the whole response,
and a COMMIT that fails there is only logged (at DEBUG): the client got a
201 for a row that was never saved.
"""

from advanced_alchemy.extensions.starlette import AdvancedAlchemy, SQLAlchemySyncConfig
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine("sqlite:///advanced_alchemy.db")
Base.metadata.create_all(engine)


# --8<-- [start:before]
def create_user(request: Request) -> JSONResponse:
    session = alchemy.get_sync_session(request)
    session.add(User(email=request.query_params["email"]))  # a duplicate fails at COMMIT
    return JSONResponse({"email": request.query_params["email"]}, status_code=201)


app = Starlette(routes=[Route("/users", create_user, methods=["POST"])])
alchemy = AdvancedAlchemy(
    config=SQLAlchemySyncConfig(engine_instance=engine, commit_mode="autocommit"),
    app=app,
)
# --8<-- [end:before]
