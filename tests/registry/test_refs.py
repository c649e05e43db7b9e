"""Names and refs: the forms users type, and readable errors for everything else."""

from __future__ import annotations

import pytest

from adapters.registry.errors import InvalidName, InvalidRef
from adapters.registry.refs import AdapterName, Ref, check_alias

DIGEST = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("acme/support-en", Ref(AdapterName("acme", "support-en"))),
        ("acme/support-en@latest", Ref(AdapterName("acme", "support-en"))),
        ("acme/support-en:12", Ref(AdapterName("acme", "support-en"), number=12)),
        ("acme/support-en@prod", Ref(AdapterName("acme", "support-en"), alias="prod")),
        (f"acme/support-en@sha256:{DIGEST}", Ref(AdapterName("acme", "support-en"), digest=DIGEST)),
        ("a.b_c-1/x.y_z-2", Ref(AdapterName("a.b_c-1", "x.y_z-2"))),
    ],
)
def test_parses_every_ref_form(text, expected):
    ref = Ref.parse(text)
    assert ref == expected
    assert str(ref) == text.removesuffix("@latest")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("acme", "expected ns/name"),
        ("acme/x/y", "expected ns/name"),
        ("Acme/x", "invalid namespace 'Acme'"),
        ("acme/-x", "invalid adapter name '-x'"),
        ("acme/" + "x" * 65, "at most 64"),
        ("acme/x:0", "positive integer"),
        ("acme/x:-1", "positive integer"),
        ("acme/x:abc", "positive integer"),
        ("acme/x:", "positive integer"),
        ("acme/x@", "alias names use"),
        ("acme/x@Prod", "alias names use"),
        ("acme/x@sha256:abc", "64 lower-case hex"),
        (f"acme/x@sha256:{DIGEST.upper()}", "64 lower-case hex"),
        ("acme/x:1@prod", "expected ns/name"),
        ("", "expected ns/name"),
    ],
)
def test_rejects_bad_refs_with_a_reason(text, message):
    with pytest.raises(InvalidRef, match=message):
        Ref.parse(text)


@pytest.mark.parametrize("text", ["acme", "acme/", "/x", "ACME/x", "acme/x y", "acme/x\n", "acme/ü"])
def test_rejects_bad_adapter_names(text):
    with pytest.raises(InvalidName, match="invalid"):
        AdapterName.parse(text)


def test_latest_is_a_reserved_alias():
    with pytest.raises(InvalidName, match="reserved"):
        check_alias("latest")
    assert check_alias("prod") == "prod"
