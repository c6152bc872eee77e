"""``optisync.server.jwt``: admit the devices whose JSON Web Token verifies; grants from claims.

Install it with ``pip install "optisync[jwt]"`` (`PyJWT`_ with its
``cryptography`` extra). :class:`JwtAuth` is a
:class:`~optisync.server.HandshakeAuthenticator`: pass it as
``SyncServer(authenticate=JwtAuth(...))``. It reads the token from the
``Authorization: Bearer`` header, a query parameter, a cookie or the hello,
checks its signature, expiry, audience and issuer, and turns its claims into
a :class:`~optisync.server.Grant` (by default, the key prefixes its ``sync``
claim lists: :func:`grant_from_sync_claim`). docs/server.md, "JWT and token
refresh", walks through it.

.. _PyJWT: https://pyjwt.readthedocs.io/

Example:
    >>> import asyncio, time
    >>> import jwt
    >>> from optisync.server import Handshake
    >>> from optisync.server.jwt import JwtAuth
    >>> from optisync.wire import Hello
    >>> secret = "a-secret-of-at-least-32-bytes-for-hs256"
    >>> auth = JwtAuth(secret=secret, audience="sync")
    >>> token = jwt.encode({"sub": "alice", "aud": "sync", "exp": time.time() + 60,
    ...                     "sync": {"read": ["user/alice/"], "write": ["user/alice/"]}}, secret)
    >>> grant = asyncio.run(auth.authenticate(Hello(device_id=1, since=0),
    ...                                       Handshake(query={"access_token": token})))
    >>> grant.name, grant.can_write("user/alice/todo"), grant.can_read("user/bob/todo")
    ('alice', True, False)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import jwt
from jwt.algorithms import get_default_algorithms

from optisync.errors import ArgumentTypeError, InvalidArgumentError, OptisyncError
from optisync.server.security import AuthRefusedError, Grant, Handshake, prefix_grant
from optisync.wire import Hello

__all__ = ["JwksUnavailableError", "JwtAuth", "grant_from_sync_claim"]

logger: Final = logging.getLogger("optisync.server.jwt")

_ASYMMETRIC: Final = ("RS256", "ES256")
_MAX_JWKS_BYTES: Final = 1024 * 1024
_MALFORMED: Final = "the token is malformed: not a signed JWT"


class JwksUnavailableError(OptisyncError, ConnectionError):
    """The JWKS document could not be read (its URL unreachable, its file unreadable, not JWKS).

    The server refuses the connection with ``unavailable`` (code 1013): the
    device retries, it is not told its token is bad. The message names the
    source and the cause.

    Example:
        >>> from optisync.server.jwt import JwksUnavailableError
        >>> issubclass(JwksUnavailableError, ConnectionError)
        True
    """


def grant_from_sync_claim(claims: Mapping[str, Any]) -> Grant:
    """The default grant: the key prefixes the token's ``sync`` claim lists, for ``sub``.

    The claim is an object with two optional lists of key prefixes::

        {"sub": "alice", "exp": 1767225600,
         "sync": {"read": ["user/alice/", "shared/"], "write": ["user/alice/", "shared/"]}}

    ``read`` prefixes name the keys the connection receives (pushes, replay,
    ``get``), ``write`` prefixes those it may ``set``; writing does not imply
    reading. A token without a ``sync`` claim is admitted with no rights at
    all: it reads and writes nothing (every ``set`` and ``get`` is refused
    with ``forbidden``), so a token issued for another purpose gives nothing
    away. A malformed claim (not an object, a list holding something else
    than strings) refuses the token (``unauthorized``). ``Grant.name`` is
    ``sub`` (required), ``Grant.expires_at`` is ``exp``.

    Raises:
        AuthRefusedError: no ``sub``, or a malformed ``sync`` claim.

    Example:
        >>> from optisync.server.jwt import grant_from_sync_claim
        >>> grant = grant_from_sync_claim({"sub": "bob", "exp": 2e9, "sync": {"read": ["shared/"]}})
        >>> grant.name, grant.expires_at, grant.can_read("shared/x"), grant.can_write("shared/x")
        ('bob', 2000000000.0, True, False)
        >>> grant_from_sync_claim({"sub": "eve", "exp": 2e9}).can_read("shared/x")
        False
    """
    name = claims.get("sub")
    if not isinstance(name, str) or not name:
        raise AuthRefusedError("the token has no `sub` claim naming who it is for")
    sync = claims.get("sync", {})
    if not isinstance(sync, Mapping):
        raise AuthRefusedError("the token's `sync` claim must be an object with read/write lists")
    read, write = sync.get("read", []), sync.get("write", [])
    for prefixes in (read, write):
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            raise AuthRefusedError("the token's `sync` read/write claims must be lists of strings")
    exp = claims.get("exp")
    expires_at = float(exp) if isinstance(exp, int | float) else None
    return prefix_grant(name, read=read, write=write, expires_at=expires_at)


class _KeySet:
    """The keys of a JWKS document read from a file or a URL: cached, reread on an unknown key id.

    One read at a time, off the event loop. Reread when older than
    ``cache_seconds``, or when a token names a key id the set lacks (a key
    rotation) but at most once per ``refetch_interval``: a stream of tokens
    with made-up key ids cannot make the server hammer the key server.
    """

    def __init__(
        self, source: str, load: Callable[[], bytes], cache_seconds: float, refetch_interval: float
    ) -> None:
        self._source = source
        self._load = load
        self._cache_seconds = cache_seconds
        self._refetch_interval = refetch_interval
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._read_at: float | None = None  # time.monotonic() of the last read (None: never)
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= self._cache_seconds:
            await self._read(None)
        elif kid not in self._keys and now - self._read_at >= self._refetch_interval:
            await self._read(self._read_at)
        return _pick(self._keys, kid)

    async def _read(self, seen: float | None) -> None:
        async with self._lock:
            if self._read_at != seen:
                return  # another task read it while this one waited
            try:
                text = await asyncio.to_thread(self._load)
                self._keys = _keys_of(json.loads(text))
            except (OSError, ValueError, jwt.PyJWKError, jwt.PyJWKSetError) as error:
                if self._read_at is not None:
                    # Keep the keys it had: a key server's hiccup must not lock everyone out.
                    logger.warning("could not reread the JWKS at %s: %s", self._source, error)
                    self._read_at = time.monotonic()
                    return
                raise JwksUnavailableError(
                    f"could not read the JWKS at {self._source}: {error}"
                ) from error
            self._read_at = time.monotonic()


def _keys_of(document: Any) -> dict[str | None, jwt.PyJWK]:
    """The signing keys of a JWKS document, by key id (a key without one under None)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('a JWKS document is an object with a "keys" list')
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in jwt.PyJWKSet.from_dict(dict(document)).keys:
        if entry.public_key_use in (None, "sig"):
            keys[entry.key_id] = entry
    return keys


def _pick(keys: Mapping[str | None, jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    if kid is not None:
        return keys.get(kid)
    # A token without a key id: only a set of one key says which.
    return next(iter(keys.values())) if len(keys) == 1 else None


def _read_file(path: str) -> Callable[[], bytes]:
    def load() -> bytes:
        with open(path, "rb") as file:
            return file.read(_MAX_JWKS_BYTES + 1)[:_MAX_JWKS_BYTES]

    return load


def _fetch_url(url: str, timeout: float) -> Callable[[], bytes]:
    def load() -> bytes:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read(_MAX_JWKS_BYTES)
            return body

    return load


class JwtAuth:
    """A :class:`~optisync.server.HandshakeAuthenticator` that admits signed, unexpired JWTs.

    Give it exactly one source of keys: ``secret`` (HMAC, HS256), ``public_key``
    (a PEM public key, or a ``cryptography`` key object), ``jwks`` (a JWKS
    document as a dict), ``jwks_file`` (a path) or ``jwks_url`` (fetched in a
    thread, cached ``jwks_cache_seconds``, refetched when a token names a key
    id it lacks, at most once every ``jwks_refetch_interval`` seconds).

    The token is read from, in order: the hello's ``token`` (what
    :class:`~optisync.client.SyncClient` sends, and what a refresh on an
    open connection carries: first, because it is newer than anything in the
    handshake), the ``Authorization: Bearer`` header, the ``query_parameter``
    of the URL (for browsers, which cannot set headers on a WebSocket) and
    the ``cookie`` (when named).

    It checks the signature, with ``algorithms`` only (never ``none``; HS256
    for a secret, RS256 and ES256 for keys by default, an HMAC algorithm never
    with a public key), ``exp`` (required), ``nbf`` and ``iat`` when present,
    ``aud`` (a token that has one is refused unless ``audience`` names it,
    and one without is refused when ``audience`` is given) and ``iss`` when
    ``issuer`` is given, each with ``leeway`` seconds of clock skew. A refused token raises
    :class:`~optisync.server.AuthRefusedError` whose message says what was
    wrong (never the token): ``token_expired`` for an expired one,
    ``unauthorized`` for anything else. The device gets that error and a 1008
    close.

    The grant is ``grant_from_claims(claims)`` (default
    :func:`grant_from_sync_claim`). Its ``expires_at``, when the callable
    leaves it None, is ``exp``; with the leeway added in either case, the
    moment the token stops being accepted.

    Raises:
        InvalidArgumentError: no source of keys, or more than one; ``none``
            among the algorithms, or an HMAC algorithm with a public key.

    Example:
        >>> from cryptography.hazmat.primitives.asymmetric import ec
        >>> from optisync.server.jwt import JwtAuth
        >>> public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        >>> JwtAuth(public_key=public_key, algorithms=["ES256"], issuer="https://login.example")
        JwtAuth(public key, algorithms=['ES256'], audience=None, issuer='https://login.example')
        >>> JwtAuth(secret="s", algorithms=["none"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        optisync.errors.InvalidArgumentError: the algorithm 'none' ...
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        public_key: Any = None,
        jwks: Mapping[str, Any] | None = None,
        jwks_file: str | os.PathLike[str] | None = None,
        jwks_url: str | None = None,
        algorithms: Sequence[str] | None = None,
        audience: str | Iterable[str] | None = None,
        issuer: str | Iterable[str] | None = None,
        leeway: float = 5.0,
        query_parameter: str | None = "access_token",
        cookie: str | None = None,
        grant_from_claims: Callable[[Mapping[str, Any]], Grant] = grant_from_sync_claim,
        jwks_cache_seconds: float = 300.0,
        jwks_refetch_interval: float = 30.0,
        jwks_timeout: float = 10.0,
    ) -> None:
        sources = {
            "secret": secret,
            "public_key": public_key,
            "jwks": jwks,
            "jwks_file": jwks_file,
            "jwks_url": jwks_url,
        }
        given = [name for name, value in sources.items() if value is not None]
        if len(given) != 1:
            raise InvalidArgumentError(
                "JwtAuth takes one source of keys: secret=, public_key=, jwks=, jwks_file= or "
                f"jwks_url= (got {', '.join(given) or 'none'})"
            )
        if not callable(grant_from_claims):
            raise ArgumentTypeError(
                f"grant_from_claims must be callable, got {grant_from_claims!r}"
            )
        self._source = given[0]
        self._algorithms = _check_algorithms(algorithms, symmetric=secret is not None)
        self._audience = audience if audience is None or isinstance(audience, str) else [*audience]
        self._issuer = issuer if issuer is None or isinstance(issuer, str) else [*issuer]
        self._leeway = float(leeway)
        self._query_parameter = query_parameter
        self._cookie = cookie
        self._grant_from_claims = grant_from_claims
        self._key: Any = secret if secret is not None else public_key
        self._static_keys: dict[str | None, jwt.PyJWK] | None = None
        self._key_set: _KeySet | None = None
        if jwks is not None:
            try:
                self._static_keys = _keys_of(jwks)
            except (ValueError, jwt.PyJWKError, jwt.PyJWKSetError) as error:
                raise InvalidArgumentError(
                    f"jwks= is not a usable JWKS document: {error}"
                ) from error
        elif jwks_file is not None:
            path = os.fspath(jwks_file)
            self._key_set = _KeySet(
                path, _read_file(path), jwks_cache_seconds, jwks_refetch_interval
            )
        elif jwks_url is not None:
            if not jwks_url.startswith(("https://", "http://")):
                raise InvalidArgumentError(f"jwks_url must be an http(s) URL, got {jwks_url!r}")
            self._key_set = _KeySet(
                jwks_url,
                _fetch_url(jwks_url, jwks_timeout),
                jwks_cache_seconds,
                jwks_refetch_interval,
            )

    def __repr__(self) -> str:
        return (
            f"JwtAuth({self._source.replace('_', ' ')}, algorithms={self._algorithms!r}, "
            f"audience={self._audience!r}, issuer={self._issuer!r})"
        )

    async def authenticate(self, hello: Hello, handshake: Handshake) -> Grant:
        """The grant for the connection whose token verifies; refuses any other.

        Raises:
            AuthRefusedError: no token, or one that does not verify (see the class).
            JwksUnavailableError: the JWKS could not be read (the server
                answers ``unavailable``: the device retries later).

        Example:
            >>> import asyncio
            >>> from optisync.server import AuthRefusedError, Handshake
            >>> from optisync.server.jwt import JwtAuth
            >>> from optisync.wire import Hello
            >>> auth = JwtAuth(secret="a-secret-of-at-least-32-bytes-for-hs256")
            >>> try:
            ...     asyncio.run(auth.authenticate(Hello(device_id=1, since=0, token="x.y.z"),
            ...                                   Handshake()))
            ... except AuthRefusedError as error:
            ...     print(error.code, "-", error)
            unauthorized - the token is malformed: not a signed JWT
        """
        token = self._token_of(hello, handshake)
        key = await self._key_for(token)
        claims = self._verify(token, key)
        grant = self._grant_from_claims(claims)
        if not isinstance(grant, Grant):
            raise TypeError(f"grant_from_claims returned {grant!r}, not a Grant")
        expires_at = grant.expires_at
        if expires_at is None:
            expires_at = float(claims["exp"])
        return Grant(grant.name, grant.can_read, grant.can_write, expires_at + self._leeway)

    def _token_of(self, hello: Hello, handshake: Handshake) -> str:
        token = hello.token or handshake.bearer_token()  # never "": refused as no token
        if token is None and self._query_parameter is not None:
            token = handshake.query.get(self._query_parameter) or None
        if token is None and self._cookie is not None:
            token = handshake.cookies.get(self._cookie) or None
        if token is None:
            where = ["the hello's token", "an Authorization: Bearer header"]
            if self._query_parameter is not None:
                where.append(f"the ?{self._query_parameter}= query parameter")
            if self._cookie is not None:
                where.append(f"the {self._cookie!r} cookie")
            raise AuthRefusedError(f"no token: send one in {', '.join(where)}")
        return token

    async def _key_for(self, token: str) -> Any:
        if self._key is not None:
            return self._key
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise AuthRefusedError(_MALFORMED) from None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthRefusedError("the token is malformed: its `kid` is not a string")
        if self._static_keys is not None:
            key = _pick(self._static_keys, kid)
        else:
            assert self._key_set is not None
            key = await self._key_set.key(kid)
        if key is None:
            raise AuthRefusedError(
                "the token is signed with a key the server does not know"
                if kid is not None
                else "the token names no key id (`kid`) and the key set holds several keys"
            )
        # The key's algorithm (its "alg", or its type's default) and no other: a
        # token cannot pick how its signature is checked.
        if header.get("alg") != key.algorithm_name or key.algorithm_name not in self._algorithms:
            raise AuthRefusedError("the token's algorithm is not allowed for its key")
        return key

    def _verify(self, token: str, key: Any) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                # pyjwt's rule, kept: a token with an `aud` is refused unless
                # `audience` names it (a token meant for another service).
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthRefusedError("the token has expired", code="token_expired") from None
        except jwt.PyJWTError as error:
            raise AuthRefusedError(_refusal(error)) from None
        return claims


def _check_algorithms(algorithms: Sequence[str] | None, *, symmetric: bool) -> list[str]:
    if algorithms is None:
        return ["HS256"] if symmetric else list(_ASYMMETRIC)
    if isinstance(algorithms, str):
        raise ArgumentTypeError(f"algorithms= takes a list, got {algorithms!r}")
    chosen = list(algorithms)
    known = get_default_algorithms()
    for name in chosen:
        if name.lower() == "none":
            raise InvalidArgumentError(
                "the algorithm 'none' accepts unsigned tokens: name the ones your issuer signs with"
            )
        if name not in known:
            raise InvalidArgumentError(f"unknown JWT algorithm {name!r}: one of {sorted(known)}")
        if name.startswith("HS") != symmetric:
            raise InvalidArgumentError(
                f"the algorithm {name!r} does not fit the key: HS* with secret=, "
                "the others with a public key or a JWKS"
            )
    if not chosen:
        raise InvalidArgumentError("algorithms= must name at least one algorithm")
    return chosen


def _refusal(error: jwt.PyJWTError) -> str:
    """What was wrong with a token, in words that never quote it."""
    if isinstance(error, jwt.ImmatureSignatureError):
        return "the token is not valid yet (its `nbf` is in the future)"
    if isinstance(error, jwt.InvalidAudienceError):
        return "the token is for another audience (`aud`)"
    if isinstance(error, jwt.InvalidIssuerError):
        return "the token is from another issuer (`iss`)"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"the token lacks the `{error.claim}` claim"
    if isinstance(error, jwt.InvalidSignatureError):
        return "the token's signature does not verify"
    if isinstance(error, jwt.InvalidAlgorithmError):
        return "the token's algorithm is not allowed"
    if isinstance(error, jwt.InvalidIssuedAtError):
        return "the token's `iat` is in the future"
    if isinstance(error, jwt.DecodeError):
        return _MALFORMED  # pyjwt's own words may quote a part of the token
    return f"the token was refused: {type(error).__name__}"
