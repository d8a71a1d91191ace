"""AWS Signature Version 4 for S3 requests, with the standard library only (boto3 does not co-resolve
with the project's pins, and a GET/LIST signer is ~60 lines). Verified against AWS's published vectors.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    # Temporary credentials (STS) also carry a session token, sent as x-amz-security-token.
    session_token: str = ""


def uri_encode(text: str, *, encode_slash: bool) -> str:
    """SigV4's URI encoding: RFC 3986 unreserved characters stay, everything else is %XX (UTF-8)."""
    return quote(text, safe="-_.~" + ("" if encode_slash else "/"))


def canonical_query(pairs: Sequence[tuple[str, str]]) -> str:
    encoded = sorted(
        (uri_encode(key, encode_slash=True), uri_encode(value, encode_slash=True)) for key, value in pairs
    )
    return "&".join(f"{key}={value}" for key, value in encoded)


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def authorization(
    *,
    method: str,
    canonical_path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    payload_sha256: str,
    credentials: Credentials,
    region: str,
    service: str,
    amz_date: str,
) -> str:
    """The Authorization header value; `headers` are the headers to sign (must include host and x-amz-date).

    `canonical_path` is already URI-encoded (S3 encodes each key segment once, keeping "/").
    """
    lowered = {name.lower().strip(): " ".join(value.strip().split()) for name, value in headers.items()}
    names = sorted(lowered)
    signed_headers = ";".join(names)
    canonical_request = "\n".join(
        [
            method,
            canonical_path,
            canonical_query(query),
            "".join(f"{name}:{lowered[name]}\n" for name in names),
            signed_headers,
            payload_sha256,
        ]
    )
    date = amz_date[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    signature = hmac.new(
        signing_key(credentials.secret_access_key, date, region, service),
        string_to_sign.encode(),
        hashlib.sha256,
    ).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
