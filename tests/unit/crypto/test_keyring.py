"""AES-256-GCM key ring: round trip, rotation, tampering, keyed hashes."""

from __future__ import annotations

import base64

import pytest

from authsvc.crypto.keyring import DecryptionFailed, Keyring, generate_key_spec

OLD = generate_key_spec("old")
NEW = generate_key_spec("new")


@pytest.fixture
def ring() -> Keyring:
    return Keyring.from_specs([OLD])


@pytest.mark.parametrize(
    "plaintext", [b"", b"x", b"totp secret JBSWY3DPEHPK3PXP", bytes(range(256)) * 64]
)
def test_round_trip(ring, plaintext):
    blob = ring.encrypt(plaintext, associated_data=b"purpose")

    assert ring.decrypt(blob, associated_data=b"purpose") == plaintext
    if len(plaintext) > 8:
        assert plaintext not in blob


def test_each_encryption_uses_a_fresh_nonce(ring):
    assert ring.encrypt(b"same") != ring.encrypt(b"same")


def test_the_first_key_encrypts_and_every_key_decrypts():
    before = Keyring.from_specs([OLD])
    old_blob = before.encrypt(b"secret")
    rotated = Keyring.from_specs([NEW, OLD])

    new_blob = rotated.encrypt(b"secret")

    assert rotated.primary_kid == "new"
    assert rotated.key_id_of(new_blob) == "new"
    assert rotated.key_id_of(old_blob) == "old"
    assert rotated.decrypt(old_blob) == b"secret"
    assert rotated.decrypt(new_blob) == b"secret"
    with pytest.raises(DecryptionFailed):
        before.decrypt(new_blob)  # the old ring never saw the new key


def test_reencryption_moves_data_to_the_primary_key():
    old_blob = Keyring.from_specs([OLD]).encrypt(b"secret", associated_data=b"ad")
    rotated = Keyring.from_specs([NEW, OLD])
    assert rotated.needs_reencryption(old_blob)

    moved = rotated.reencrypt(old_blob, associated_data=b"ad")

    assert not rotated.needs_reencryption(moved)
    assert Keyring.from_specs([NEW]).decrypt(moved, associated_data=b"ad") == b"secret"


def test_a_retired_key_cannot_decrypt():
    blob = Keyring.from_specs([NEW, OLD]).encrypt(b"secret")
    old_only_blob = Keyring.from_specs([OLD]).encrypt(b"secret")

    with pytest.raises(DecryptionFailed):
        Keyring.from_specs([NEW]).decrypt(old_only_blob)
    assert Keyring.from_specs([NEW]).decrypt(blob) == b"secret"


@pytest.mark.parametrize("position", [0, 1, 3, 8, 20, -1])
def test_tampering_is_detected(ring, position):
    blob = bytearray(ring.encrypt(b"secret payload", associated_data=b"ad"))
    blob[position] ^= 0x01

    with pytest.raises(DecryptionFailed):
        ring.decrypt(bytes(blob), associated_data=b"ad")


def test_truncation_is_detected(ring):
    blob = ring.encrypt(b"secret payload")

    for length in (0, 1, 2, 10, len(blob) - 1):
        with pytest.raises(DecryptionFailed):
            ring.decrypt(blob[:length])


def test_associated_data_binds_the_ciphertext_to_its_purpose(ring):
    blob = ring.encrypt(b"secret", associated_data=b"outbox")

    with pytest.raises(DecryptionFailed):
        ring.decrypt(blob, associated_data=b"signing-key")


def test_a_key_id_cannot_be_swapped():
    """The key id is authenticated: relabelling a blob with another kid fails."""
    ring = Keyring.from_specs([generate_key_spec("aaa"), generate_key_spec("bbb")])
    blob = ring.encrypt(b"secret")
    relabelled = blob.replace(b"aaa", b"bbb", 1)

    with pytest.raises(DecryptionFailed):
        ring.decrypt(relabelled)


def test_same_key_under_another_id_does_not_decrypt():
    material = OLD.split(":", 1)[1]
    blob = Keyring.from_specs([OLD]).encrypt(b"secret")

    with pytest.raises(DecryptionFailed):
        Keyring.from_specs([f"other:{material}"]).decrypt(blob)


@pytest.mark.parametrize(
    "specs",
    [
        [],
        ["k1"],
        ["k1:"],
        [f"k1:{base64.urlsafe_b64encode(b'x' * 16).decode()}"],
        [f":{OLD.split(':', 1)[1]}"],
        [OLD, OLD],
    ],
    ids=["empty", "no-key", "empty-key", "16-bytes", "no-kid", "duplicate-kid"],
)
def test_invalid_specs(specs):
    with pytest.raises(ValueError):
        Keyring.from_specs(specs)


def test_generated_specs_are_32_byte_keys():
    kid, _, material = generate_key_spec("k9").partition(":")

    assert kid == "k9"
    assert len(base64.urlsafe_b64decode(material + "=")) == 32
    assert generate_key_spec("k9") != generate_key_spec("k9")


def test_mac_is_keyed_and_survives_rotation():
    before = Keyring.from_specs([OLD])
    after = Keyring.from_specs([NEW, OLD])
    stranger = Keyring.from_specs([NEW])

    assert before.mac("audit-email", b"ada@example.com") == after.mac(
        "audit-email", b"ada@example.com"
    )
    assert before.mac("audit-email", b"ada@example.com") != stranger.mac(
        "audit-email", b"ada@example.com"
    )
    assert before.mac("audit-email", b"x") != before.mac("recovery-code", b"x")
    assert len(before.mac("audit-email", b"x")) == 64
