"""The app uvicorn serves in the real-server runs: pattern and database from the environment."""

from __future__ import annotations

import os

from sqlalchemy import create_engine

from benchmarks import apps

_url = os.environ["BENCH_URL"]
_builder, _kind = apps.PATTERNS[os.environ["BENCH_PATTERN"]]
_pool = {"pool_size": int(os.environ.get("BENCH_POOL", "5")), "max_overflow": 0, "pool_timeout": 10}
app = _builder(apps.async_engine_for(_url, **_pool) if _kind == "async" else create_engine(_url, **_pool))
