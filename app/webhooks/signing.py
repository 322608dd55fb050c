"""Standard Webhooks signatures (https://www.standardwebhooks.com/): `v1,` and the base64
HMAC-SHA256 of `id.timestamp.body`, keyed with the bytes a `whsec_…` secret encodes."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence


def signature(keys: Sequence[bytes], *, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,…` per key, space separated (while a secret is
    being rotated, the old one and the new one both sign, and a receiver holding either
    verifies)."""
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys
    )
