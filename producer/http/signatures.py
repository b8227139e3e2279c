"""How providers sign their callbacks, both ways: each verifier checks a callback's raw body
and headers (before anything parses the body) and returns the delivery's id, which replays
repeat; each signer makes what the provider would send (the sandbox and the tests use them).

Every verifier refuses a timestamp more than WINDOW_S away from now. Schemes (README
"Provider callbacks"; worker/dialects/SOURCES.md section 11):
- standard-webhooks: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
  (space-separated, for key rotation), the key the base64 after `whsec_`;
- hmac-openrouter: `X-OpenRouter-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t,body">`;
- ed25519-jwks (fal): `X-Fal-Webhook-Signature` (hex) over "request id\\nuser id\\ntimestamp\\n
  sha256_hex(body)", by any key of the published set;
- jwt-jwks (Gemini's per-request webhooks): an RS256 JWT in `webhook-signature`, by the key
  its `kid` names, within its `iat`/`exp`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import (
    RSAPrivateKey,
    RSAPublicKey,
    RSAPublicNumbers,
)

# A callback signed further than this from now is refused: a replay of an old delivery.
WINDOW_S = 300

PublicKey = Ed25519PublicKey | RSAPublicKey


class Refused(Exception):
    """Raised when a callback is refused; reason is the metric's label."""

    def __init__(self, reason: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


class UnknownKey(Refused):
    """Raised when no key of the cached set verifies: the set may have rotated."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_signature", message)


def _timestamp(raw: str | None, now_s: float) -> int:
    try:
        ts = int(raw or "")
    except ValueError:
        raise Refused("bad_signature", "no timestamp, or not an integer") from None
    if abs(now_s - ts) > WINDOW_S:
        raise Refused("stale_timestamp", f"timestamp {ts} is more than {WINDOW_S} s from now")
    return ts


def _missing(*values: str | None) -> bool:
    return any(not v for v in values)


# --- standard-webhooks ---


def _whsec(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of a Standard Webhooks delivery."""
    mac = hmac.new(_whsec(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify_standard(secret: str, headers: Mapping[str, str], body: bytes, now_s: float) -> str:
    """The delivery's webhook-id, if it is signed with secret.

    Raises:
        Refused: bad_signature, or stale_timestamp.
    """
    msg_id, raw_ts, sent = (headers.get(h) for h in
                            ("webhook-id", "webhook-timestamp", "webhook-signature"))  # fmt: skip
    if _missing(msg_id, raw_ts, sent):
        raise Refused("bad_signature", "webhook-id, -timestamp and -signature are required")
    assert msg_id is not None and sent is not None
    ts = _timestamp(raw_ts, now_s)
    expected = standard_signature(secret, msg_id, ts, body)
    if not any(hmac.compare_digest(s.encode(), expected.encode()) for s in sent.split()):
        raise Refused("bad_signature", "no webhook-signature matches")
    return msg_id


# --- hmac-openrouter ---


def openrouter_signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-OpenRouter-Signature header of a delivery."""
    mac = hmac.new(secret.encode(), f"{timestamp},".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_openrouter(secret: str, headers: Mapping[str, str], body: bytes, now_s: float) -> str:
    """The delivery's id (its timestamp and body hash: OpenRouter names none we could
    confirm), if it is signed with secret.

    Raises:
        Refused: bad_signature, or stale_timestamp.
    """
    header = headers.get("x-openrouter-signature") or ""
    parts = [p.strip().partition("=") for p in header.split(",")]
    raw_ts = next((v for k, _, v in parts if k == "t"), None)
    sent = [v for k, _, v in parts if k == "v1"]
    if _missing(raw_ts) or not sent:
        raise Refused("bad_signature", "X-OpenRouter-Signature needs t= and v1=")
    ts = _timestamp(raw_ts, now_s)
    expected = openrouter_signature(secret, ts, body).rpartition("v1=")[2]
    if not any(hmac.compare_digest(v.encode(), expected.encode()) for v in sent):
        raise Refused("bad_signature", "no v1 signature matches")
    return f"{ts}:{hashlib.sha256(body).hexdigest()}"


# --- ed25519-jwks (fal) ---


def _fal_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()


def fal_signature(
    key: Ed25519PrivateKey, request_id: str, user_id: str, timestamp: int, body: bytes
) -> str:
    """The X-Fal-Webhook-Signature (hex) of a delivery."""
    return key.sign(_fal_message(request_id, user_id, str(timestamp), body)).hex()


def verify_fal(
    keys: Sequence[PublicKey], headers: Mapping[str, str], body: bytes, now_s: float
) -> str:
    """The delivery's id (request id and timestamp), if a key of the set signed it.

    Raises:
        UnknownKey: no key verifies (the caller refreshes the set once and tries again).
        Refused: bad_signature (headers missing or malformed), or stale_timestamp.
    """
    rid, uid, raw_ts, sent = (headers.get(f"x-fal-webhook-{h}") for h in
                              ("request-id", "user-id", "timestamp", "signature"))  # fmt: skip
    if _missing(rid, raw_ts, sent) or uid is None:
        raise Refused("bad_signature", "X-Fal-Webhook-Request-Id, -User-Id, -Timestamp and "
                      "-Signature are required")  # fmt: skip
    assert rid is not None and raw_ts is not None and sent is not None
    _timestamp(raw_ts, now_s)
    try:
        signature = bytes.fromhex(sent)
    except ValueError:
        raise Refused("bad_signature", "X-Fal-Webhook-Signature is not hex") from None
    message = _fal_message(rid, uid, raw_ts, body)
    for key in keys:
        if isinstance(key, Ed25519PublicKey):
            try:
                key.verify(signature, message)
                return f"{rid}:{raw_ts}"
            except InvalidSignature:
                continue
    raise UnknownKey("no key of the set verifies the signature")


# --- jwt-jwks (RS256) ---


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_signature(key: RSAPrivateKey, kid: str, claims: dict[str, Any]) -> str:
    """An RS256 JWT of claims, its header naming kid."""
    head = _b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    signing = f"{head}.{_b64url(json.dumps(claims).encode())}"
    sig = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing}.{_b64url(sig)}"


def verify_jwt(
    keys: Mapping[str, PublicKey], headers: Mapping[str, str], body: bytes, now_s: float
) -> str:
    """The delivery's id (webhook-id, else the token's jti, else its hash), if the RS256 JWT
    in webhook-signature is signed by the key its kid names and is within its times.

    What the token's claims bind is not documented where we looked, so the body is not taken
    to be vouched for: the job's status query confirms every callback anyway.

    Raises:
        UnknownKey: its kid is not in the set (the caller refreshes it once).
        Refused: bad_signature, or stale_timestamp.
    """
    token = (headers.get("webhook-signature") or "").strip()
    try:
        head_part, claims_part, sig_part = token.split(".")
        head = json.loads(_unb64url(head_part))
        claims = json.loads(_unb64url(claims_part))
        signature = _unb64url(sig_part)
    except (ValueError, binascii.Error):
        raise Refused("bad_signature", "webhook-signature is not a JWT") from None
    if not isinstance(head, dict) or not isinstance(claims, dict) or head.get("alg") != "RS256":
        raise Refused("bad_signature", "the JWT is not RS256")
    key = keys.get(str(head.get("kid")))
    if not isinstance(key, RSAPublicKey):
        raise UnknownKey(f"no key {head.get('kid')!r} in the set")
    try:
        key.verify(signature, f"{head_part}.{claims_part}".encode(), padding.PKCS1v15(),
                   hashes.SHA256())  # fmt: skip
    except InvalidSignature:
        raise Refused("bad_signature", "the JWT's signature does not verify") from None
    issued, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued, int | float) or abs(now_s - issued) > WINDOW_S:
        raise Refused("stale_timestamp", f"iat is missing or more than {WINDOW_S} s from now")
    if isinstance(expires, int | float) and now_s > expires + WINDOW_S:
        raise Refused("stale_timestamp", "the JWT has expired")
    return headers.get("webhook-id") or str(
        claims.get("jti") or hashlib.sha256(token.encode()).hexdigest()
    )


# --- key sets ---


def jwk_key(jwk: Mapping[str, Any]) -> PublicKey | None:
    """A JWK as a public key (OKP/Ed25519 or RSA); None for any other kind."""
    try:
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            return Ed25519PublicKey.from_public_bytes(_unb64url(str(jwk["x"])))
        if jwk.get("kty") == "RSA":
            n = int.from_bytes(_unb64url(str(jwk["n"])), "big")
            e = int.from_bytes(_unb64url(str(jwk["e"])), "big")
            return RSAPublicNumbers(e, n).public_key()
    except (KeyError, ValueError, binascii.Error):
        return None
    return None


def public_jwk(key: Ed25519PrivateKey | RSAPrivateKey, kid: str) -> dict[str, str]:
    """The JWK of a private key's public half (what a provider publishes)."""
    if isinstance(key, Ed25519PrivateKey):
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid}
    numbers = key.public_key().public_numbers()

    def whole(i: int) -> str:
        return _b64url(i.to_bytes((i.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "alg": "RS256", "n": whole(numbers.n), "e": whole(numbers.e), "kid": kid}
