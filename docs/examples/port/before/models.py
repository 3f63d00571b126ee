"""The app's tables and request bodies (SQLModel)."""

from sqlmodel import Field, SQLModel


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, max_length=255)
    hashed_password: str
    is_active: bool = True


class Item(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=255)
    owner_id: int = Field(foreign_key="user.id")


class SignUp(SQLModel):
    email: str
    password: str
    first_item: str | None = None


class Login(SQLModel):
    email: str
    password: str


class ItemCreate(SQLModel):
    title: str
