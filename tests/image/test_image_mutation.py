"""No mutated signed image verifies; parse/verify raise nothing but ImageFormatError."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vbsim.image import TrustStore, parse_image, verify_image

Mutation = tuple[str, int, bytes]


def _apply(data: bytes, mutation: Mutation) -> bytes:
    kind, where, blob = mutation
    where %= len(data) + 1
    if kind == "xor" and data:
        index = where % len(data)
        return data[:index] + bytes([data[index] ^ (blob[0] or 1)]) + data[index + 1 :]
    if kind == "overwrite":
        return data[:where] + blob + data[where + len(blob) :]
    if kind == "insert":
        return data[:where] + blob + data[where:]
    if kind == "delete":
        return data[:where] + data[where + len(blob) :]
    if kind == "truncate":
        return data[:where]
    return data + blob  # append


def _mutations(image: bytes) -> st.SearchStrategy[list[Mutation]]:
    # Bias positions toward the structures parsers are pickiest about: headers, .tPolicy,
    # the resources, the exports and the certificate table.
    parsed = parse_image(image)
    regions = [(0, len(image)), (0, 0x400)]
    regions += [(s.raw_offset, s.raw_offset + s.raw_size) for s in parsed.sections[2:]]
    if parsed.certificate_table is not None:
        regions.append((parsed.certificate_table[0], len(image)))
    where = st.one_of(*(st.integers(start, end - 1) for start, end in regions))
    kinds = st.sampled_from(["xor", "overwrite", "insert", "delete", "truncate", "append"])
    one = st.tuples(kinds, where, st.binary(min_size=1, max_size=24))
    return st.lists(one, min_size=1, max_size=3)


def _check(data: bytes, original: bytes, trust: TrustStore) -> None:
    # verify_image runs parse_image and catches only ImageFormatError, so any other exception
    # from either function escapes here and fails the test.
    result = verify_image(data, trust)
    if result.image is not None:
        assert result.image == parse_image(data)
    if data != original:
        assert not result.ok, "a mutated image verified as valid"


@dataclass(frozen=True)
class Original:
    """The image under test, with a short repr for Hypothesis' failure reports."""

    data: bytes

    def __repr__(self) -> str:
        return f"<signed image, {len(self.data)} bytes>"


@pytest.fixture(scope="module")
def original(signed_trustlet: bytes) -> Original:
    return Original(signed_trustlet)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_signed_image_never_verifies(
    data: st.DataObject, original: Original, trust: TrustStore
) -> None:
    mutations = data.draw(_mutations(original.data))
    mutated = original.data
    for mutation in mutations:
        mutated = _apply(mutated, mutation)
    assume(mutated != original.data)
    _check(mutated, original.data, trust)


def test_every_single_bit_flip_in_headers_and_signature_fails(
    small_signed: bytes, trust: TrustStore
) -> None:
    """Exhaustive over the PE headers and the whole certificate table."""
    table = parse_image(small_signed).certificate_table
    assert table is not None
    flips = [(p, 0x01) for p in range(0x400)]
    flips += [(p, m) for p in range(table[0], len(small_signed)) for m in (0x01, 0x80)]
    for position, mask in flips:
        mutated = bytearray(small_signed)
        mutated[position] ^= mask
        result = verify_image(bytes(mutated), trust)
        assert not result.ok, f"flip {mask:#x} at {position:#x} still verifies"
