"""Signed promotions (registry/signing.py): what a record binds, what a replica's verifier refuses, and hostile
records (malformed, wrong types, huge numbers, other keys)."""

from __future__ import annotations

import json
import time

import pytest

from registry.signing import (
    PromotionRecord,
    Rejected,
    Signer,
    Verifier,
    next_seq,
    sign_promotion,
    weights_digest,
)

KEY = "k" * 32
DIGEST = weights_digest(b"weights")


def rejected(verifier: Verifier, name: str, version: int, raw: str | bytes | None) -> str:
    with pytest.raises(Rejected) as caught:
        verifier.check(name, version, raw)
    return caught.value.reason


def test_a_record_is_bound_to_model_version_digest_and_sequence() -> None:
    signer = Signer(KEY)
    record = signer.sign("m", 2, DIGEST, 7)
    assert signer.authentic(record)
    assert PromotionRecord.parse(record.to_json()) == record
    for change in ({"model": "n"}, {"version": 3}, {"weights_sha256": weights_digest(b"other")}, {"seq": 8}):
        fields = {**json.loads(record.to_json()), **change}
        altered = PromotionRecord.parse(json.dumps(fields))
        assert altered is not None and not signer.authentic(altered), change
    assert not Signer("x" * 32).authentic(record)


def test_old_keys_verify_but_do_not_sign() -> None:
    old, new = Signer("o" * 32), Signer("n" * 32, old_keys=["o" * 32])
    assert new.authentic(old.sign("m", 1, DIGEST, 1))
    assert not old.authentic(new.sign("m", 1, DIGEST, 1))  # signed with the new key only
    assert not Signer("n" * 32).authentic(old.sign("m", 1, DIGEST, 1))  # once the old key is dropped


def test_short_keys_are_refused_and_the_key_is_never_shown() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        Signer("short")
    with pytest.raises(ValueError, match="at least 32"):
        Signer(KEY, old_keys=["short"])
    signer = Signer(KEY, old_keys=["o" * 32])
    assert KEY not in repr(signer) and "o" * 32 not in repr(signer)
    assert KEY not in signer.sign("m", 1, DIGEST, 1).to_json()


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe not utf-8",
        "not json",
        "[]",
        "null",
        '{"format": 1}',
        '{"format": 2, "model": "m", "version": 1, "weights_sha256": "'
        + "0" * 64
        + '", "seq": 1, "mac": "'
        + "0" * 64
        + '"}',
        '{"format": 1, "model": "m", "version": true, "weights_sha256": "'
        + "0" * 64
        + '", "seq": 1, "mac": "'
        + "0" * 64
        + '"}',
        '{"format": 1, "model": "m", "version": "1", "weights_sha256": "'
        + "0" * 64
        + '", "seq": 1, "mac": "'
        + "0" * 64
        + '"}',
        '{"format": 1, "model": ["m"], "version": 1, "weights_sha256": "' + "0" * 64 + '", "seq": 1, "mac": "x"}',
        '{"format": 1, "model": "m", "version": 1, "weights_sha256": "short", "seq": 1, "mac": "' + "0" * 64 + '"}',
        "[" * 2000 + "]" * 2000,  # nesting beyond the parser's recursion limit
        '{"format": 1, "model": "' + "m" * 10**6 + '"}',  # oversized
    ],
    ids=lambda raw: repr(raw[:24]) + f"…{len(raw)}",
)
def test_malformed_records_are_refused_as_forged(raw: str | bytes) -> None:
    assert PromotionRecord.parse(raw) is None
    assert rejected(Verifier(Signer(KEY)), "m", 1, raw) == "forged"


def test_the_verifier_refuses_unsigned_forged_and_replayed_pointers() -> None:
    signer = Signer(KEY)
    verifier = Verifier(signer)
    assert rejected(verifier, "m", 1, None) == "unsigned"
    forged = Signer("x" * 32).sign("m", 1, DIGEST, 10**12)
    assert rejected(verifier, "m", 1, forged.to_json()) == "forged"
    first = signer.sign("m", 1, DIGEST, 5)
    assert verifier.check("m", 1, first.to_json()) == first
    verifier.accept(first)
    assert rejected(verifier, "m", 1, first.to_json()) == "replayed"  # the same record again
    assert rejected(verifier, "m", 1, signer.sign("m", 1, DIGEST, 4).to_json()) == "replayed"  # an older one
    assert rejected(verifier, "m", 2, signer.sign("m", 1, DIGEST, 9).to_json()) == "replayed"  # another version
    assert rejected(verifier, "n", 1, signer.sign("m", 1, DIGEST, 9).to_json()) == "replayed"  # another model
    assert verifier.check("n", 1, signer.sign("n", 1, DIGEST, 1).to_json()).model == "n"  # models count apart
    newer = signer.sign("m", 2, DIGEST, 6)
    assert verifier.check("m", 2, newer.to_json()) == newer
    with pytest.raises(Rejected) as caught:
        verifier.check_weights(newer, weights_digest(b"tampered"))
    assert caught.value.reason == "digest"
    verifier.check_weights(newer, DIGEST)


def test_sequence_numbers_increase_and_a_forged_record_cannot_push_them() -> None:
    signer = Signer(KEY)
    before = time.time_ns() // 1000
    assert next_seq(None) >= before
    assert next_seq(10**18) == 10**18 + 1  # a stored sequence ahead of the clock still increases
    first = sign_promotion(signer, "m", 1, b"w", None)
    second = sign_promotion(signer, "m", 1, b"w", first.to_json())
    assert second.seq > first.seq and second.weights_sha256 == weights_digest(b"w")
    inflated = Signer("x" * 32).sign("m", 1, DIGEST, 10**30)
    assert sign_promotion(signer, "m", 1, b"w", inflated.to_json()).seq < 10**18
    assert sign_promotion(signer, "m", 1, b"w", b"\xff garbage").seq >= before
