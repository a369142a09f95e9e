"""The manifest emitter reads back exactly; the metadata reader agrees with a full parse."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from secretsync.delivery import emit

KEYS = st.one_of(
    st.from_regex(r"[A-Za-z_.][A-Za-z0-9_./-]{0,20}", fullmatch=True),
    st.text(min_size=1, max_size=12),
)
SCALARS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "yes",
            "No",
            "on",
            "null",
            "~",
            "1e3",
            "0x1f",
            "010",
            "-",
            "- a",
            "a: b",
            "#c",
            "x #y",
            "",
            " lead",
            "trail ",
            "'",
            '"',
            "\\",
            "\u2028",
            "\ufeff",
            "\x85",
            "\x00",
            "😀",
            "{{ .x }}",
            "---",
            "...",
            "=",
            "<<",
            ".inf",
            "y",
            "n",
        ]
    ),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.none(),
)
DOCS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.dictionaries(KEYS, children, max_size=5),
        st.lists(st.dictionaries(KEYS, children, max_size=3), max_size=3),
        st.lists(SCALARS, max_size=3),
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(doc=st.dictionaries(KEYS, DOCS, min_size=1, max_size=6))
def test_emitted_yaml_reads_back_exactly(doc: dict[str, Any]) -> None:
    assert yaml.load(emit.dump(doc), Loader=yaml.CSafeLoader) == doc


def test_plain_and_quoted_choices() -> None:
    assert emit.scalar("secretsync") == "secretsync"
    assert emit.scalar("AgB+/x==") == "AgB+/x=="
    assert emit.scalar("yes") == '"yes"'
    assert emit.scalar("10") == '"10"'
    assert emit.scalar(".dockerconfigjson") == '".dockerconfigjson"'
    assert emit.scalar("a\nb") == '"a\\nb"'
    assert emit.scalar("\u2028") == '"\\u2028"'


def test_emitter_matches_pyyaml_layout_for_manifests() -> None:
    doc = {"a": {"b": [{"c": "d", "e": {"f": "g"}}, {"h": "i"}], "j": []}, "k": {}}
    assert emit.dump(doc).decode() == yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


@pytest.mark.parametrize(
    "meta",
    [
        {
            "name": "x",
            "namespace": "ns",
            "labels": {"a": "b"},
            "annotations": {"c": "yes", "d": "a\nb"},
        },
        {"name": "x", "namespace": "ns"},
    ],
)
def test_metadata_reader_agrees_with_yaml(meta: dict[str, Any]) -> None:
    doc = {
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": meta,
        "spec": {"encryptedData": {"k": "AgB"}},
    }
    data = emit.dump(doc)
    full = yaml.safe_load(data)
    del full["spec"]
    assert emit.read_metadata(data) == full


@pytest.mark.parametrize(
    "text",
    [
        b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n  labels: {a: b}\nspec: {}\n",
        b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n  extra: 1\nspec: {}\n",
        b"kind: Secret\nmetadata:\n  name: x\n    odd: indent\nspec: {}\n",
        b"not yaml at all",
    ],
)
def test_metadata_reader_declines_what_it_did_not_write(text: bytes) -> None:
    assert emit.read_metadata(text) is None
