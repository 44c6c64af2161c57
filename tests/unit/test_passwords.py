"""The admin password is kept only as a salted scrypt hash; checks are exact and never crash."""

from __future__ import annotations

import pytest

from vstore.metadata.passwords import hash_password, new_password, verify_password


def test_a_password_verifies_against_its_hash_only() -> None:
    password = new_password()
    assert len(password) >= 20
    stored = hash_password(password)
    assert stored.startswith("scrypt$") and password not in stored
    assert verify_password(password, stored)
    assert not verify_password(password[:-1], stored)
    assert hash_password(password) != stored  # a fresh salt each time


@pytest.mark.parametrize("stored", ["", "plain", "scrypt$1$2$3", "md5$1$1$1$AA==$AA==", "scrypt$x$8$1$AA==$AA==",
                                    "scrypt$32768$8$1$!!$AA=="])
def test_a_malformed_record_never_verifies(stored: str) -> None:
    assert not verify_password("anything", stored)
