"""Each provider callback verifier (producer/http/signatures.py) against known vectors and its
own signer: a good signature passes and names the delivery; a changed body, another secret
or key, and an old timestamp are refused with the reason the metric counts."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from producer.core.callbacks import CallbackSpec, Signature
from producer.http.signatures import (
    WINDOW_S,
    Refused,
    UnknownKey,
    fal_signature,
    jwk_key,
    jwt_signature,
    openrouter_signature,
    public_jwk,
    standard_signature,
    verify_fal,
    verify_jwt,
    verify_openrouter,
    verify_standard,
)

# The Standard Webhooks specification's published test vector (its reference libraries'
# tests use the same secret, id, timestamp, payload and signature).
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TS = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _sw_headers(signature: str = SW_SIGNATURE, ts: int = SW_TS) -> dict[str, str]:
    return {"webhook-id": SW_ID, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_standard_webhooks_signs_the_published_vector():
    assert standard_signature(SW_SECRET, SW_ID, SW_TS, SW_BODY) == SW_SIGNATURE


def test_standard_webhooks_accepts_the_published_vector_among_rotated_signatures():
    headers = _sw_headers(f"v1,Zm9vYmFy {SW_SIGNATURE}")
    assert verify_standard(SW_SECRET, headers, SW_BODY, SW_TS + 10) == SW_ID


@pytest.mark.parametrize(
    ("headers", "body", "secret", "reason"),
    [
        (_sw_headers(), SW_BODY + b" ", SW_SECRET, "bad_signature"),
        (_sw_headers(), SW_BODY, "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB", "bad_signature"),
        (_sw_headers("v2," + SW_SIGNATURE[3:]), SW_BODY, SW_SECRET, "bad_signature"),
        ({"webhook-id": SW_ID}, SW_BODY, SW_SECRET, "bad_signature"),
    ],
)
def test_standard_webhooks_refuses_a_changed_body_another_secret_or_missing_headers(
    headers, body, secret, reason
):
    with pytest.raises(Refused) as refused:
        verify_standard(secret, headers, body, SW_TS)
    assert refused.value.reason == reason


def test_standard_webhooks_refuses_a_timestamp_outside_five_minutes_either_way():
    for now in (SW_TS + WINDOW_S + 1, SW_TS - WINDOW_S - 1):
        with pytest.raises(Refused) as refused:
            verify_standard(SW_SECRET, _sw_headers(), SW_BODY, now)
        assert refused.value.reason == "stale_timestamp"


def test_openrouter_signature_is_the_hex_hmac_of_timestamp_comma_body():
    # Computed independently: HMAC-SHA256(key=b"secret", msg=b'1700000000,{"a":1}').
    import hashlib
    import hmac

    body = b'{"a":1}'
    expected = hmac.new(b"secret", b"1700000000," + body, hashlib.sha256).hexdigest()
    assert openrouter_signature("secret", 1700000000, body) == f"t=1700000000,v1={expected}"
    header = {"x-openrouter-signature": f"t=1700000000,v1={expected}"}
    delivery = verify_openrouter("secret", header, body, 1700000001)
    assert delivery.startswith("1700000000:")
    for bad in ({"x-openrouter-signature": f"t=1700000000,v1={'0' * len(expected)}"},
                {"x-openrouter-signature": "v1=" + expected}):  # fmt: skip
        with pytest.raises(Refused, match="signature|t="):
            verify_openrouter("secret", bad, body, 1700000001)
    with pytest.raises(Refused) as stale:
        verify_openrouter("secret", header, body, 1700000000 + WINDOW_S + 1)
    assert stale.value.reason == "stale_timestamp"


def test_fal_signature_verifies_with_the_key_set_and_not_with_another_key():
    key = Ed25519PrivateKey.generate()
    public = jwk_key(public_jwk(key, "k1"))
    assert public is not None
    body = b'{"request_id": "r1", "status": "OK"}'
    signature = fal_signature(key, "r1", "u1", 1700000000, body)
    headers = {
        "x-fal-webhook-request-id": "r1",
        "x-fal-webhook-user-id": "u1",
        "x-fal-webhook-timestamp": "1700000000",
        "x-fal-webhook-signature": signature,
    }
    assert verify_fal([public], headers, body, 1700000000) == "r1:1700000000"
    other = jwk_key(public_jwk(Ed25519PrivateKey.generate(), "k2"))
    assert other is not None
    with pytest.raises(UnknownKey):
        verify_fal([other], headers, body, 1700000000)
    with pytest.raises(UnknownKey):
        verify_fal([public], headers, body + b" ", 1700000000)
    with pytest.raises(Refused) as stale:
        verify_fal([public], headers, body, 1700000000 + WINDOW_S + 1)
    assert stale.value.reason == "stale_timestamp"


def test_fal_signature_covers_request_id_user_timestamp_and_body_hash_in_that_order():
    """The message fal documents: the four parts joined by newlines, the body as its sha256."""
    import hashlib

    key = Ed25519PrivateKey.generate()
    body = b"{}"
    message = "\n".join(["r1", "u1", "7", hashlib.sha256(body).hexdigest()]).encode()
    key.public_key().verify(bytes.fromhex(fal_signature(key, "r1", "u1", 7, body)), message)


def test_jwt_verifies_by_its_kid_and_refuses_an_unknown_kid_a_forgery_and_an_old_token():
    key = generate_private_key(public_exponent=65537, key_size=2048)
    public = jwk_key(public_jwk(key, "g1"))
    assert public is not None
    token = jwt_signature(key, "g1", {"iat": 1700000000, "exp": 1700000600, "jti": "d1"})
    assert verify_jwt({"g1": public}, {"webhook-signature": token}, b"{}", 1700000010) == "d1"
    with pytest.raises(UnknownKey):
        verify_jwt({"other": public}, {"webhook-signature": token}, b"{}", 1700000010)
    forged = jwt_signature(generate_private_key(public_exponent=65537, key_size=2048), "g1",
                           {"iat": 1700000000})  # fmt: skip
    with pytest.raises(Refused) as bad:
        verify_jwt({"g1": public}, {"webhook-signature": forged}, b"{}", 1700000010)
    assert bad.value.reason == "bad_signature"
    with pytest.raises(Refused) as stale:
        verify_jwt({"g1": public}, {"webhook-signature": token}, b"{}", 1700000000 + 2 * WINDOW_S)
    assert stale.value.reason == "stale_timestamp"


def test_a_key_set_needs_a_url_and_an_end_word_list_decides_what_hastens():
    with pytest.raises(ValueError, match="keys_url"):
        CallbackSpec(url_field="w", signature=Signature.ED25519)
    spec = CallbackSpec(url_field="w", signature=Signature.NONE, ends=["Success", "failed"])
    assert spec.ends_with("success") and spec.ends_with("FAILED")
    assert not spec.ends_with("processing")
    assert CallbackSpec(url_field="w", signature=Signature.NONE).ends_with("processing")
