"""Before: a `Depends(get_db)` generator that commits after `yield`.

The bug: FastAPI runs the code after `yield` once the response has been sent,
so a COMMIT that fails there is never seen by the client, who got a 201.
"""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


engine = create_engine("sqlite:///get_db.db")
Base.metadata.create_all(engine)
SessionLocal = sessionmaker(bind=engine)
app = FastAPI()


# --8<-- [start:before]
def get_db() -> Iterator[Session]:
    db = SessionLocal()
    try:
        yield db
        db.commit()  # runs after the response was sent
    except Exception:
        db.rollback()
        raise
    finally:
        db.close()


@app.post("/users", status_code=201)
def create_user(email: str, db: Annotated[Session, Depends(get_db)]) -> dict[str, str]:
    db.add(User(email=email))  # a duplicate fails at COMMIT, after the 201
    return {"email": email}


# --8<-- [end:before]
