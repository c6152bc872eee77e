"""JwtAuth admits signed, unexpired tokens with grants from their claims, and refuses the rest.

Tokens are real: signed by pyjwt with RSA and EC keys generated here and an
HS256 secret. Refusals reach a device as one error with its code and a 1008
close; a refresh on an open connection keeps the socket and swaps the grant.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from optisync.errors import ArgumentTypeError, InvalidArgumentError
from optisync.server import (
    AuthRefusedError,
    Grant,
    Handshake,
    Limits,
    SqliteStorage,
    SyncServer,
    prefix_grant,
)
from optisync.server.jwt import JwksUnavailableError, JwtAuth, grant_from_sync_claim
from optisync.wire import Hello
from tests.server.conftest import serving

SECRET = "test-secret-of-at-least-thirty-two-bytes"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
AUDIENCE, ISSUER = "optisync-test", "https://login.test"
HELLO = Hello(device_id=1, since=0)
ALICE = {"read": ["user/alice/", "shared/"], "write": ["user/alice/", "shared/"]}
BOB = {"read": ["user/bob/", "shared/"], "write": ["user/bob/", "shared/"]}


def claims(sub: str = "alice", lifetime: float = 300, **more: Any) -> dict[str, Any]:
    return {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time() + lifetime), **more}


def signed(payload: dict[str, Any], key: Any = RSA_KEY, algorithm: str = "RS256", **kw: Any) -> str:
    return jwt.encode(payload, key, algorithm=algorithm, **kw)


def short_exp() -> int:
    """An ``exp`` one to two seconds ahead: what the expiry and refresh tests wait for."""
    return math.ceil(time.time()) + 1


def jwk_of(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    entry: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return {**entry, "kid": kid, "alg": alg, "use": "sig"}


def rsa_auth(**options: Any) -> JwtAuth:
    return JwtAuth(
        public_key=RSA_KEY.public_key(), audience=AUDIENCE, issuer=ISSUER, leeway=0, **options
    )


async def refused(auth: JwtAuth, token: str | None) -> AuthRefusedError:
    with pytest.raises(AuthRefusedError) as caught:
        await auth.authenticate(Hello(device_id=1, since=0, token=token), Handshake())
    return caught.value


# -- refusals: the right code, a clear message, never the token ------------------


def hmac_signed_with_the_public_key(payload: dict[str, Any]) -> str:
    """The classic confusion: HS256 keyed with the verifier's public key (pyjwt won't make it)."""
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = base64url(json.dumps(payload).encode())
    signature = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{base64url(signature)}"


def base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


BAD_TOKENS = {
    "expired": (signed(claims(lifetime=-60)), "token_expired", "has expired"),
    "not yet valid": (signed(claims(nbf=time.time() + 600)), "unauthorized", "not valid yet"),
    "wrong audience": (signed(claims(aud="other")), "unauthorized", "another audience"),
    "wrong issuer": (signed(claims(iss="https://evil")), "unauthorized", "another issuer"),
    "wrong key": (signed(claims(), OTHER_RSA_KEY), "unauthorized", "signature does not verify"),
    "alg none": (signed(claims(), None, "none"), "unauthorized", "algorithm is not allowed"),
    "hmac with the public key": (
        hmac_signed_with_the_public_key(claims()),
        "unauthorized",
        "algorithm is not allowed",
    ),
    "no exp": (signed({"sub": "alice", "aud": AUDIENCE, "iss": ISSUER}), "unauthorized", "`exp`"),
    "garbage": ("not-a-token", "unauthorized", "malformed"),
    "three garbage parts": ("eyJ.eyJ.sig", "unauthorized", "malformed"),
}


@pytest.mark.parametrize("case", BAD_TOKENS)
async def test_a_bad_token_is_refused_with_its_code_and_a_message_that_never_quotes_it(
    case: str,
) -> None:
    token, code, words = BAD_TOKENS[case]
    error = await refused(rsa_auth(), token)
    assert (error.code, words in str(error)) == (code, True), str(error)
    assert token not in str(error)


async def test_a_token_for_an_audience_the_verifier_was_not_told_of_is_refused() -> None:
    auth = JwtAuth(public_key=RSA_KEY.public_key(), issuer=ISSUER)  # no audience=
    assert "another audience" in str(await refused(auth, signed(claims())))


async def test_no_token_anywhere_is_refused_naming_where_to_send_one() -> None:
    error = await refused(rsa_auth(cookie="session"), None)
    assert error.code == "unauthorized"
    assert "no token" in str(error)
    assert "'session' cookie" in str(error)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "one source of keys"),
        ({"secret": SECRET, "jwks": {"keys": []}}, "one source of keys"),
        ({"secret": SECRET, "algorithms": ["none"]}, "'none'"),
        ({"secret": SECRET, "algorithms": ["RS256"]}, "does not fit the key"),
        ({"public_key": RSA_KEY.public_key(), "algorithms": ["HS256"]}, "does not fit the key"),
        ({"jwks": {"nokeys": 1}}, "not a usable JWKS"),
    ],
)
def test_a_misconfigured_verifier_is_refused_at_construction(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        JwtAuth(**options)


# -- the same refusals on the wire: one error, then a 1008 close -----------------


@pytest.fixture
def authenticate() -> JwtAuth:
    return rsa_auth()


def hello(token: str | None, device_id: int = 1) -> str:
    return json.dumps({"type": "hello", "device_id": device_id, "since": 0, "token": token})


async def until_closed(connection: ClientConnection) -> list[dict[str, Any]]:
    """What a connection receives until the server closes it."""
    received = []
    try:
        while True:
            received.append(json.loads(await connection.recv()))
    except ConnectionClosed:
        return received


async def first_reply(url: str, token: str | None, **connect_options: Any) -> list[Any]:
    """Everything a connection receives after its hello, and its close code and reason."""
    async with connect(url, **connect_options) as connection:
        await connection.send(hello(token))
        received: list[Any] = await until_closed(connection)
    return [*received, (connection.close_code, connection.close_reason)]


@pytest.mark.parametrize("case", ["expired", "wrong audience", "alg none", "garbage"])
async def test_a_bad_token_gets_one_error_and_a_policy_close(
    server: tuple[SyncServer, str], case: str
) -> None:
    token, code, _ = BAD_TOKENS[case]
    error, close = await first_reply(server[1], token)
    assert (error["type"], error["code"], close) == ("error", code, (1008, code))


async def test_an_unreachable_jwks_url_asks_the_device_to_retry_not_to_give_up(
    database: Path,
) -> None:
    auth = JwtAuth(jwks_url="http://127.0.0.1:9/jwks.json", jwks_timeout=2)
    async with SyncServer(SqliteStorage(database), authenticate=auth).run(port=0) as url:
        error, close = await first_reply(url, signed(claims()))
    assert (error["code"], close) == ("unavailable", (1013, "unavailable"))


# -- where the token comes from ------------------------------------------------------


async def welcome_of(url: str, token: str | None = None, **connect_options: Any) -> dict[str, Any]:
    async with connect(url, **connect_options) as connection:
        await connection.send(hello(token))
        welcome: dict[str, Any] = json.loads(await connection.recv())
        return welcome


async def test_the_token_is_read_from_a_bearer_header_a_query_parameter_a_cookie_or_the_hello(
    database: Path,
) -> None:
    auth = rsa_auth(cookie="session")
    payload = claims()
    token = signed(payload)
    async with SyncServer(SqliteStorage(database), authenticate=auth).run(port=0) as url:
        welcomes = [
            await welcome_of(url, additional_headers={"Authorization": f"Bearer {token}"}),
            await welcome_of(f"{url}/?access_token={token}"),
            await welcome_of(url, additional_headers={"Cookie": f"theme=dark; session={token}"}),
            await welcome_of(url, token),
        ]
    assert [w["type"] for w in welcomes] == ["welcome"] * 4
    assert {w["expires_at"] for w in welcomes} == {payload["exp"]}


async def test_a_grant_that_never_expires_adds_nothing_to_the_welcome() -> None:
    async with SyncServer(SqliteStorage(":memory:")).run(port=0) as plain:
        welcome = await welcome_of(plain)
    assert "expires_at" not in welcome


# -- keys from a JWKS document, file or URL ------------------------------------------


async def test_a_jwks_document_verifies_each_token_with_the_key_its_kid_names() -> None:
    jwks = {"keys": [jwk_of(RSA_KEY, "r1", "RS256"), jwk_of(EC_KEY, "e1", "ES256")]}
    auth = JwtAuth(jwks=jwks, audience=AUDIENCE, issuer=ISSUER)
    by_rsa = signed(claims("rsa"), RSA_KEY, "RS256", headers={"kid": "r1"})
    by_ec = signed(claims("ec"), EC_KEY, "ES256", headers={"kid": "e1"})
    grants = [await auth.authenticate(Hello(1, 0, token=t), Handshake()) for t in (by_rsa, by_ec)]
    names = [grant.name for grant in grants]
    assert names == ["rsa", "ec"]
    # An EC token claiming the RSA key's id is checked with that key, and fails.
    forged = signed(claims(), EC_KEY, "ES256", headers={"kid": "r1"})
    assert "algorithm" in str(await refused(auth, forged))
    unknown = signed(claims(), RSA_KEY, "RS256", headers={"kid": "r9"})
    assert "does not know" in str(await refused(auth, unknown))


async def test_a_jwks_file_is_reread_when_a_token_names_a_new_key(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk_of(RSA_KEY, "old", "RS256")]}))
    auth = JwtAuth(jwks_file=path, audience=AUDIENCE, issuer=ISSUER, jwks_refetch_interval=0)
    old = signed(claims(), RSA_KEY, headers={"kid": "old"})
    assert (await auth.authenticate(Hello(1, 0, token=old), Handshake())).name == "alice"
    path.write_text(json.dumps({"keys": [jwk_of(EC_KEY, "new", "ES256")]}))  # a rotation
    new = signed(claims("bob"), EC_KEY, "ES256", headers={"kid": "new"})
    assert (await auth.authenticate(Hello(1, 0, token=new), Handshake())).name == "bob"


class JwksServer:
    """A JWKS document served over loopback HTTP from a thread; counts its requests."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.document = {"keys": keys}
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    with JwksServer([jwk_of(RSA_KEY, "k1", "RS256")]) as served:
        yield served


async def test_a_jwks_url_is_fetched_once_and_cached(jwks_server: JwksServer) -> None:
    auth = JwtAuth(jwks_url=jwks_server.url, audience=AUDIENCE, issuer=ISSUER)
    token = signed(claims(), headers={"kid": "k1"})
    grants = await asyncio.gather(
        *(auth.authenticate(Hello(i, 0, token=token), Handshake()) for i in range(1, 6))
    )
    assert [g.name for g in grants] == ["alice"] * 5
    assert jwks_server.requests == 1


async def test_unknown_key_ids_refetch_the_jwks_at_a_bounded_rate(jwks_server: JwksServer) -> None:
    auth = JwtAuth(jwks_url=jwks_server.url, audience=AUDIENCE, jwks_refetch_interval=3600)
    await auth.authenticate(Hello(1, 0, token=signed(claims(), headers={"kid": "k1"})), Handshake())
    for n in range(20):  # made-up key ids: one fetch at first, none after within the interval
        made_up = signed(claims(), headers={"kid": f"made-up-{n}"})
        assert "does not know" in str(await refused(auth, made_up))
    assert jwks_server.requests == 1


async def test_a_rotated_key_is_fetched_when_a_token_names_it(jwks_server: JwksServer) -> None:
    auth = JwtAuth(jwks_url=jwks_server.url, audience=AUDIENCE, jwks_refetch_interval=0)
    await auth.authenticate(Hello(1, 0, token=signed(claims(), headers={"kid": "k1"})), Handshake())
    jwks_server.document = {"keys": [jwk_of(EC_KEY, "k2", "ES256")]}
    rotated = signed(claims("bob"), EC_KEY, "ES256", headers={"kid": "k2"})
    assert (await auth.authenticate(Hello(1, 0, token=rotated), Handshake())).name == "bob"
    assert jwks_server.requests == 2


async def test_a_jwks_url_that_fails_at_first_reports_its_source() -> None:
    auth = JwtAuth(jwks_url="http://127.0.0.1:9/jwks.json", jwks_timeout=2)
    with pytest.raises(JwksUnavailableError, match=r"127\.0\.0\.1:9"):
        await auth.authenticate(Hello(1, 0, token=signed(claims())), Handshake())


# -- grants from claims ----------------------------------------------------------------


def test_the_sync_claim_lists_what_a_token_may_read_and_write() -> None:
    grant = grant_from_sync_claim({"sub": "alice", "exp": 2e9, "sync": ALICE})
    assert (grant.name, grant.expires_at) == ("alice", 2e9)
    assert [grant.can_read(k) for k in ("user/alice/a", "shared/b", "user/bob/c")] == [
        True,
        True,
        False,
    ]
    assert grant.can_write("user/alice2/x") is False


def test_a_token_without_the_sync_claim_may_read_and_write_nothing() -> None:
    grant = grant_from_sync_claim({"sub": "alice", "exp": 2e9})
    assert (grant.can_read(""), grant.can_read("shared/x"), grant.can_write("x")) == (
        False,
        False,
        False,
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"exp": 2e9, "sync": ALICE},
        {"sub": "a", "sync": ["user/"]},
        {"sub": "a", "sync": {"read": "user/"}},
        {"sub": "a", "sync": {"write": [1]}},
    ],
)
def test_a_token_without_sub_or_with_a_malformed_sync_claim_is_refused(
    payload: dict[str, Any],
) -> None:
    with pytest.raises(AuthRefusedError) as caught:
        grant_from_sync_claim(payload)
    assert caught.value.code == "unauthorized"


async def test_grant_from_claims_may_read_any_claim() -> None:
    def by_role(claims: Any) -> Grant:
        admin = claims.get("role") == "admin"
        return Grant(claims["sub"], can_write=lambda key: admin)

    auth = JwtAuth(secret=SECRET, grant_from_claims=by_role, leeway=0)
    token = jwt.encode({"sub": "root", "role": "admin", "exp": int(time.time()) + 60}, SECRET)
    grant = await auth.authenticate(Hello(1, 0, token=token), Handshake())
    assert (grant.name, grant.can_write("any"), grant.expires_at) == (
        "root",
        True,
        float(jwt.decode(token, SECRET, algorithms=["HS256"])["exp"]),
    )


# -- grants enforced on the wire: get, set, replay, push ------------------------------


def hs_token(sub: str, sync: dict[str, Any] | None = None, exp: float | None = None) -> str:
    payload: dict[str, Any] = {"sub": sub, "exp": exp or int(time.time()) + 300}
    if sync is not None:
        payload["sync"] = sync
    return jwt.encode(payload, SECRET, algorithm="HS256")


@pytest.fixture
async def hs_url(database: Path, limits: Limits, transport: str) -> AsyncIterator[str]:
    """A server admitting HS256 tokens, on each transport: refresh and expiry hold on both."""
    auth = JwtAuth(secret=SECRET, leeway=0)
    sync_server = SyncServer(SqliteStorage(database), authenticate=auth, limits=limits)
    async with serving(sync_server, transport) as url:
        yield url


class Device:
    """A raw protocol connection, past its replay."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.welcome: dict[str, Any] = {}
        self.replayed: list[str] = []
        self.pushed: list[str] = []
        self._ids = 0

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        self._ids += 1
        await self.connection.send(json.dumps({"type": kind, "request_id": self._ids, **fields}))
        while (reply := json.loads(await self.connection.recv()))["type"] == "push":
            self.pushed.append(reply["key"])
        assert reply["request_id"] == self._ids, reply
        answer: dict[str, Any] = reply
        return answer

    async def set(self, key: str, value: Any = 1) -> str:
        reply = await self.request("set", key=key, value=value, local_revision=1)
        return str(reply["type"] if reply["type"] == "ack" else reply["code"])

    async def get(self, key: str) -> str:
        reply = await self.request("get", key=key)
        return str(reply["type"] if reply["type"] == "value" else reply["code"])


@pytest.fixture
async def open_device(hs_url: str) -> AsyncIterator[Any]:
    opened: list[ClientConnection] = []

    async def open_one(device_id: int, token: str) -> Device:
        connection = await connect(hs_url)
        opened.append(connection)
        device = Device(connection)
        await connection.send(hello(token, device_id))
        device.welcome = json.loads(await connection.recv())
        assert device.welcome["type"] == "welcome", device.welcome
        while (message := json.loads(await connection.recv()))["type"] == "push":
            device.replayed.append(message["key"])
        assert message["type"] == "ready"
        return device

    yield open_one
    for connection in opened:
        await connection.close()


async def test_grants_from_claims_hold_for_get_set_replay_and_push(open_device: Any) -> None:
    alice = await open_device(1, hs_token("alice", ALICE))
    bob = await open_device(2, hs_token("bob", BOB))
    assert [await alice.set("user/alice/a"), await alice.set("user/bob/a")] == ["ack", "forbidden"]
    assert [await bob.set("user/bob/b"), await bob.set("shared/s")] == ["ack", "ack"]
    assert [await alice.get("user/bob/b"), await alice.get("shared/s")] == ["forbidden", "value"]
    # Alice's connection received the shared push, never Bob's own key.
    assert "shared/s" in alice.pushed
    assert "user/bob/b" not in alice.pushed
    later = await open_device(3, hs_token("alice", ALICE))
    assert sorted(later.replayed) == ["shared/s", "user/alice/a"]
    nobody = await open_device(4, hs_token("carol"))  # no sync claim: nothing at all
    assert nobody.replayed == []
    assert [await nobody.get("shared/s"), await nobody.set("shared/s")] == ["forbidden"] * 2


# -- refresh on an open connection, and expiry ----------------------------------------


async def closed_with(device: Device) -> tuple[list[dict[str, Any]], int | None, str | None]:
    """What the device receives until the server closes it, and how it closed."""
    received = await until_closed(device.connection)
    return received, device.connection.close_code, device.connection.close_reason


async def test_a_connection_whose_token_expires_unrefreshed_is_closed_token_expired(
    database: Path, transport: str
) -> None:
    exp = short_exp()
    server = SyncServer(SqliteStorage(database), authenticate=JwtAuth(secret=SECRET, leeway=0))
    async with serving(server, transport) as url, connect(url) as connection:
        await connection.send(hello(hs_token("alice", ALICE, exp=exp)))
        welcome, ready, *received = await until_closed(connection)
    assert (welcome["expires_at"], ready["type"]) == (exp, "ready")
    assert [(m["type"], m["request_id"], m["code"]) for m in received] == [
        ("error", None, "token_expired")
    ]
    assert (connection.close_code, connection.close_reason) == (1008, "token_expired")
    assert time.time() >= exp
    # The timer fired, the close ran in a task of its own: nothing is left behind.
    assert server.connection_count == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_refresh_keeps_the_connection_past_the_first_expiry_with_the_new_rights(
    open_device: Any,
) -> None:
    exp = short_exp()
    device = await open_device(1, hs_token("alice", {"write": ["user/alice/"]}, exp=exp))
    assert await device.set("shared/s") == "forbidden"
    later = int(time.time()) + 300
    authed = await device.request("auth", token=hs_token("alice", ALICE, exp=later))
    assert (authed["type"], authed["expires_at"]) == ("authed", later)
    assert await device.set("shared/s") == "ack"  # the new grant's rights, at once
    # Past the first token's expiry, on the same socket: the new expiry holds.
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.2)
    assert await device.set("user/alice/after") == "ack"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (hs_token("mallory", ALICE), "unauthorized"),
        ("garbage", "unauthorized"),
        (hs_token("alice", ALICE, exp=int(time.time()) - 60), "token_expired"),
    ],
    ids=["another sub", "garbage", "expired"],
)
async def test_a_refused_refresh_gets_its_error_and_a_policy_close(
    open_device: Any, token: str, code: str
) -> None:
    device = await open_device(1, hs_token("alice", ALICE))
    await device.connection.send(json.dumps({"type": "auth", "request_id": 7, "token": token}))
    received, close_code, reason = await closed_with(device)
    assert [(m["type"], m["request_id"], m["code"]) for m in received] == [("error", 7, code)]
    assert (close_code, reason) == (1008, code)


@pytest.mark.parametrize("limits", [Limits(messages_per_second=0.001, burst=1)])
async def test_a_refresh_spends_the_rate_limit_like_any_message(open_device: Any) -> None:
    device = await open_device(1, hs_token("alice", ALICE))
    token = hs_token("alice", ALICE)
    assert (await device.request("auth", token=token))["type"] == "authed"
    assert (await device.request("auth", token=token))["code"] == "rate_limited"


async def test_a_refresh_the_authenticator_cannot_check_keeps_the_connection(
    database: Path,
) -> None:
    class FailsOnRefresh:
        calls = 0

        async def authenticate(self, hello: Hello, handshake: Handshake) -> Grant:
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("the identity provider is down")
            return Grant("alice")

    server = SyncServer(SqliteStorage(database), authenticate=FailsOnRefresh())
    async with server.run(port=0) as url, connect(url) as connection:
        device = Device(connection)
        await connection.send(hello("t"))
        assert [json.loads(await connection.recv())["type"] for _ in "wr"] == ["welcome", "ready"]
        refused = await device.request("auth", token="t2")
        assert (refused["type"], refused["code"]) == ("error", "unavailable")
        assert await device.set("k") == "ack"  # the same connection, the old grant


def test_prefix_grant_takes_lists_of_prefixes_not_a_string() -> None:
    grant = prefix_grant("alice", read=(p for p in ["a/", "b/"]))
    assert (grant.can_read("b/x"), grant.can_write("b/x")) == (True, False)
    with pytest.raises(ArgumentTypeError, match="list of key prefixes"):
        prefix_grant("alice", write="user/alice/")


async def test_a_refresh_that_widens_the_grant_brings_the_newly_readable_keys_at_once(
    open_device: Any,
) -> None:
    bob = await open_device(2, hs_token("bob", BOB))
    assert [await bob.set("user/bob/b"), await bob.set("shared/s")] == ["ack", "ack"]
    alice = await open_device(1, hs_token("alice", ALICE))
    assert sorted(alice.replayed) == ["shared/s"]
    # The same grant again: nothing new to send.
    again = await alice.request("auth", token=hs_token("alice", ALICE))
    assert (again["type"], alice.pushed) == ("authed", [])
    # A grant that adds Bob's prefix: his key arrives before the authed answer.
    wider = {"read": [*ALICE["read"], "user/bob/"], "write": ALICE["write"]}
    widened = await alice.request("auth", token=hs_token("alice", wider))
    assert (widened["type"], alice.pushed) == ("authed", ["user/bob/b"])
    # And live from then on, each once.
    assert await bob.set("user/bob/c") == "ack"
    assert await alice.get("user/bob/c") == "value"
    assert alice.pushed == ["user/bob/b", "user/bob/c"]
