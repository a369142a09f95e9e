from __future__ import annotations

import pytest

from secretsync.core import templating

LABELS = {"env": "prod", "topology.kubernetes.io/region": "eu-west-1"}


def test_template_fills_name_and_labels() -> None:
    text = "{{ cluster.name }}/{{cluster.labels.env}}/{{ cluster.labels.topology.kubernetes.io/region }}"
    assert (
        templating.render(text, cluster_name="prod-euw1", labels=LABELS)
        == "prod-euw1/prod/eu-west-1"
    )


def test_template_missing_label_is_an_error_never_empty() -> None:
    with pytest.raises(templating.TemplateError, match="has no label 'team'"):
        templating.render("x-{{ cluster.labels.team }}", cluster_name="c1", labels=LABELS)


@pytest.mark.parametrize(
    "text",
    [
        "{{ cluster.namespace }}",
        "{{ env }}",
        "{{ cluster.labels. }}",
        "{{ cluster.labels.a b }}",
        "a {{ b",
        "}} a",
    ],
)
def test_template_check_rejects_anything_else(text: str) -> None:
    assert templating.check(text)


def test_plain_text_passes_through() -> None:
    assert templating.check("no templates here") == []
    assert templating.render("plain", cluster_name="c", labels={}) == "plain"
