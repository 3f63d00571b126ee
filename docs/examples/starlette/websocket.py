"""The Starlette adapter: WebSockets, one unit per message.

Run it:  uvicorn websocket:app   (it writes websocket.db in the current directory)
"""

from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

import uow
from uow.starlette import UnitOfWorkMiddleware


class Base(DeclarativeBase):
    pass


class Message(Base):
    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


engine = create_engine("sqlite:///websocket.db")
Base.metadata.create_all(engine)
uow.configure(engine)


# --8<-- [start:websocket]
async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    async for text in websocket.iter_text():
        async with uow.unit_of_work() as session:  # one unit per message
            session.add(Message(text=text))  # add() does no I/O; COMMIT runs in a thread
        await websocket.send_text("saved")


app = Starlette(
    routes=[WebSocketRoute("/chat", chat)],
    middleware=[Middleware(UnitOfWorkMiddleware)],  # lets websocket scopes through
)
# --8<-- [end:websocket]
