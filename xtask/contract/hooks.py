"""Schemathesis hooks for `cargo xtask contract`: two header values whose
validity depends on the server's state, which no OpenAPI document can
state, made valid where the generated value has the valid shape. Values of
the wrong shape are left as generated, so their rejection is still checked.

- `Idempotency-Key`: the same key with a different request is refused
  (422 `idempotency_key_reused`, as the IETF Idempotency-Key draft says).
  Hypothesis reuses short values, so each well-formed key gets a suffix
  that makes it unique to its request.
- `X-Consistency-Token`: a token beyond the head of the log is refused at
  once (400 `invalid_consistency_token`, SPEC 7). A well-formed token is
  replaced by position 1, which the command run before has written.
- An order's lines name each product once (422 naming the line
  otherwise): JSON Schema cannot say "unique by one property"
  (`uniqueItems` compares whole items), so a repeated product id is
  replaced by a new one. The rule itself is tested in Rust
  (command-api's tests).
- `GET /v1/events` without `until` is a live subscription: it never
  ends, which a tester waiting for each answer cannot take. Such a case
  gets `until=head` (a finite read of the same log, through the same
  code); the live form is tested in Rust (query-api's tests).
"""

import itertools
import re
import uuid

import schemathesis

_KEY = re.compile(r"[!-~]{1,255}")
_TOKENS = re.compile(r"[0-9]{1,19}( *, *[0-9]{1,19}){0,63}")
_count = itertools.count()


def _header(headers, name):
    for key in headers or {}:
        if key.lower() == name:
            return key
    return None


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.operation.path == "/v1/events":
        case.query = dict(case.query or {})
        case.query.setdefault("until", "head")
    key = _header(case.headers, "idempotency-key")
    if key is not None and isinstance(case.headers[key], str) and _KEY.fullmatch(case.headers[key]):
        suffix = f"~{next(_count)}"
        case.headers[key] = case.headers[key][: 255 - len(suffix)] + suffix
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("lines"), list):
        seen = set()
        for line in body["lines"]:
            if isinstance(line, dict) and isinstance(line.get("product_id"), str):
                if line["product_id"] in seen:
                    line["product_id"] = str(uuid.uuid4())
                seen.add(line["product_id"])
    token = _header(case.headers, "x-consistency-token")
    if token is not None and isinstance(case.headers[token], str) and _TOKENS.fullmatch(case.headers[token]):
        case.headers[token] = "1"
