"""Read replicas on PostgreSQL: read-your-writes by WAL position.

Run it:  PRIMARY_URL=postgresql+psycopg://... REPLICA_URL=postgresql+psycopg://... python postgres.py
(the replica streams from the primary: ``pg_basebackup -R`` made it)
"""

import os

from sqlalchemy import create_engine, text

import uow
from uow.replicas import Routing, causal_token, use_token

# --8<-- [start:configure]
manager = uow.configure(
    create_engine(os.environ["PRIMARY_URL"]),
    replicas=[
        # pool_pre_ping: a replica that went away is noticed when a unit starts, so its reads
        # go to the primary instead of failing at their first query
        create_engine(os.environ["REPLICA_URL"], pool_pre_ping=True),
    ],
    routing=Routing(
        read_your_writes="lsn",  # the default on PostgreSQL
        max_wait=0.5,  # wait this long for the replica to replay a write, then read the primary
        max_lag=10.0,  # skip a replica further behind than this (seconds)
        cooldown=5.0,  # skip a replica that refused a connection for this long
    ),
)
# --8<-- [end:configure]


# --8<-- [start:token]
def write() -> str | None:
    with uow.unit_of_work() as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS notes (body text)"))
        session.execute(text("INSERT INTO notes VALUES ('hello')"))
    return causal_token()  # where the primary's WAL was after the COMMIT


def read_later(token: str | None) -> int:
    with use_token(token), uow.unit_of_work(read_only=True) as session:
        # a replica that has replayed the write, or the primary: never a stale answer
        return int(session.scalar(text("SELECT count(*) FROM notes")) or 0)


# --8<-- [end:token]


if __name__ == "__main__":
    print(read_later(write()))
