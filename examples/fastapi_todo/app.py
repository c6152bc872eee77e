"""The web app: a login that issues JWTs, and sync mounted at ``/sync``.

Each user's token lets them read and write their own list
(``user/<name>/``) and the shared one (``team/``), nothing else: the
server enforces it on every path (get, set, delete, replay, push, subscribe).

Run it on its own with uvicorn::

    OPTISYNC_TODO_SECRET=<32 random bytes or more> uvicorn examples.fastapi_todo.app:app --port 8000
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from typing import Any

import jwt
from fastapi import FastAPI, HTTPException
from prometheus_client import CollectorRegistry, make_asgi_app
from pydantic import BaseModel

from optisync.server import SqliteStorage, SyncServer
from optisync.server.asgi import SyncEndpoint
from optisync.server.jwt import JwtAuth
from optisync.server.metrics import ServerMetrics

AUDIENCE = "todo-sync"
ISSUER = "todo-app"
# A demo's user table. A real app checks passwords against its own (hashed) store.
USERS = {"alice": "wonderland", "bob": "builder"}


class Login(BaseModel):
    username: str
    password: str


def sync_claim(user: str) -> dict[str, list[str]]:
    """The key prefixes ``user`` may read and write: their own list and the team's shared one."""
    prefixes = [f"user/{user}/", "team/"]
    return {"read": prefixes, "write": prefixes}


def issue_token(user: str, secret: str, lifetime: float) -> str:
    """A signed JWT for ``user``, valid ``lifetime`` seconds, carrying their sync grant."""
    now = time.time()
    claims: dict[str, Any] = {
        "sub": user,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": int(now),
        "exp": now + lifetime,
        "sync": sync_claim(user),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def create_app(database: str, secret: str, *, token_lifetime: float = 900.0) -> FastAPI:
    """The app: ``POST /login``, the sync endpoint at ``/sync``, and ``/metrics``."""
    registry = CollectorRegistry()
    auth = JwtAuth(secret=secret, audience=AUDIENCE, issuer=ISSUER)
    server = SyncServer(SqliteStorage(database), authenticate=auth, metrics=ServerMetrics(registry))
    endpoint = SyncEndpoint(server)
    app = FastAPI(lifespan=endpoint.lifespan)
    app.add_api_websocket_route("/sync", endpoint.serve)
    app.mount("/metrics", make_asgi_app(registry))

    @app.post("/login")
    async def login(body: Login) -> dict[str, Any]:
        expected = USERS.get(body.username, "")
        if not expected or not hmac.compare_digest(expected, body.password):
            raise HTTPException(status_code=401, detail="wrong user name or password")
        token = issue_token(body.username, secret, token_lifetime)
        return {"access_token": token, "token_type": "bearer", "expires_in": token_lifetime}

    return app


def _app_from_environment() -> FastAPI:
    # A secret made at start-up signs tokens that end with the process: set
    # OPTISYNC_TODO_SECRET to keep devices logged in across restarts.
    secret = os.environ.get("OPTISYNC_TODO_SECRET") or secrets.token_urlsafe(32)
    database = os.environ.get("OPTISYNC_TODO_DATABASE", "todo-web.sqlite3")
    lifetime = float(os.environ.get("OPTISYNC_TODO_TOKEN_SECONDS", "900"))
    return create_app(database, secret, token_lifetime=lifetime)


app = _app_from_environment()
