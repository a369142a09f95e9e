from __future__ import annotations

import pytest

from secretsync.core import selectors
from secretsync.core.model import Operator, Requirement, Selector

LABELS = {"env": "prod", "region": "us-east-1", "tier": "restricted"}


@pytest.mark.parametrize(
    ("requirements", "expected"),
    [
        ((), True),
        ((Requirement("env", Operator.IN, ("prod",)),), True),
        ((Requirement("env", Operator.IN, ("dev", "staging")),), False),
        ((Requirement("missing", Operator.IN, ("x",)),), False),
        ((Requirement("env", Operator.NOT_IN, ("dev",)),), True),
        ((Requirement("env", Operator.NOT_IN, ("prod",)),), False),
        ((Requirement("missing", Operator.NOT_IN, ("x",)),), True),
        ((Requirement("tier", Operator.EXISTS),), True),
        ((Requirement("missing", Operator.EXISTS),), False),
        ((Requirement("missing", Operator.DOES_NOT_EXIST),), True),
        ((Requirement("tier", Operator.DOES_NOT_EXIST),), False),
        (
            (
                Requirement("env", Operator.IN, ("prod", "staging")),
                Requirement("region", Operator.NOT_IN, ("eu-west-1",)),
                Requirement("tier", Operator.EXISTS),
            ),
            True,
        ),
        (
            (
                Requirement("env", Operator.IN, ("prod",)),
                Requirement("region", Operator.IN, ("eu-west-1",)),
            ),
            False,
        ),
    ],
)
def test_selector_matches_like_the_api_server(
    requirements: tuple[Requirement, ...], expected: bool
) -> None:
    assert selectors.matches(Selector(requirements), LABELS) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("env=prod", True),
        ("env==prod", True),
        ("env!=prod", False),
        ("env in (prod, staging),tier", True),
        ("env notin (prod)", False),
        ("!legacy", True),
        ("!tier", False),
        ("region=us-east-1, tier=restricted", True),
        ("", True),
    ],
)
def test_selector_string_syntax(text: str, expected: bool) -> None:
    assert selectors.matches(selectors.parse(text), LABELS) is expected


@pytest.mark.parametrize(
    "text", ["env in ()", "=prod", "env=pr od!", "bad key=x", "env=" + "x" * 64]
)
def test_selector_string_errors_when_malformed(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        selectors.parse(text)


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("env", True),
        ("topology.kubernetes.io/region", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("-env", False),
        ("Bad_Prefix/x", False),
        ("/x", False),
    ],
)
def test_label_key_validity(key: str, ok: bool) -> None:
    assert (selectors.label_key_problem(key) is None) is ok
