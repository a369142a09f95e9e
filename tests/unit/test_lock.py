"""requirements.lock against pyproject.toml and the Dockerfile: every runtime dependency and
the build backend pinned exactly, with hashes, inside pyproject's floors; the floors and the
pins past the releases that fixed published advisories; the image installing from the lock
with --require-hashes. (That the lock installs into a clean venv and passes `pip check` is
tests/adapters/test_chart.py::test_image_install_steps_work_in_a_clean_venv, which replays the
Dockerfile's build step.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.adapters.test_chart import DOCKERFILE, dockerfile_stages

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"

# package -> (first release with every fix, the advisories): what the floors must be past.
# Direct dependencies: pyproject.toml's floor itself must exclude every affected release.
DIRECT_ADVISORIES: dict[str, tuple[str, str]] = {
    "aiohttp": (
        "3.14.3",
        "request smuggling and parser DoS: CVE-2024-52304 (3.10.11), CVE-2025-53643 (3.12.14), "
        "CVE-2025-69223 (3.13.3), CVE-2026-34513..34525 (3.13.4), CVE-2026-54273..54280 "
        "(3.14.1), CVE-2026-59881 and CVE-2026-69243 (3.14.2), CVE-2026-69244 (3.14.3)",
    ),
    "cryptography": (
        "50.0.0",
        "CVE-2023-50782 (42.0.0), CVE-2024-26130 (42.0.4), OpenSSL in wheels "
        "GHSA-h4gh-qq45-vh27 (43.0.1) and CVE-2024-12797 (44.0.1), CVE-2026-26007 (46.0.5), "
        "CVE-2026-34180 (48.0.1), GHSA-g6cj-pr64-35w5 and GHSA-jwv3-5hgf-82ww (by 50.0.0)",
    ),
    "pyyaml": ("5.4", "CVE-2020-14343: arbitrary code through full_load (5.4)"),
    "kubernetes": (
        "35.0.0",
        "the first release that admits urllib3 with CVE-2025-50181/50182 fixed; "
        "CVE-2021-29923 reported against releases before 25.3.0",
    ),
}
# Packages the direct ones pull in: the lock's pin must be past these.
TRANSITIVE_ADVISORIES: dict[str, tuple[str, str]] = {
    "urllib3": (
        "2.6.3",
        "CVE-2025-50181/50182 (2.5.0), CVE-2025-66418/66471 (2.6.0), CVE-2026-21441",
    ),
    "requests": ("2.32.4", "CVE-2024-35195 (2.32.0), CVE-2024-47081 (2.32.4)"),
    "idna": ("3.7", "CVE-2024-3651"),
    "certifi": ("2024.7.4", "CVE-2024-39689"),
    "setuptools": ("78.1.1", "CVE-2024-6345 (70.0.0), CVE-2025-47273 (78.1.1)"),
}


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runtime_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return [Requirement(text) for text in project["dependencies"]]


def build_requirements() -> list[Requirement]:
    build = pyproject()["build-system"]
    assert isinstance(build, dict)
    return [Requirement(text) for text in build["requires"]]


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (pinned spec, [sha256 hashes])}; refuses any line it does not know."""
    joined = re.sub(r"\\\n\s*", " ", text)
    pins: dict[str, tuple[str, list[str]]] = {}
    for number, raw in enumerate(joined.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        found = re.fullmatch(
            r"([A-Za-z0-9][A-Za-z0-9._-]*)((?:[=<>!~]=?[^\s;]+)?)((?:\s+--hash=\S+)*)", line
        )
        assert found, f"requirements.lock: line {number}: not a pin: {line[:80]}"
        name, spec, hashes = found.groups()
        spec = spec or ""
        key = canonicalize_name(name)
        assert key not in pins, f"requirements.lock: {name} pinned twice"
        pins[key] = (spec, [h.removeprefix("--hash=") for h in hashes.split()])
    return pins


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[str, list[str]]]:
    return parse_lock(LOCK.read_text())


def pinned(lock: dict[str, tuple[str, list[str]]], name: str) -> Version:
    spec, _ = lock[canonicalize_name(name)]
    assert spec.startswith("=="), f"{name}: {spec}"
    return Version(spec[2:])


def floor(specifier: SpecifierSet) -> Version | None:
    lows = [Version(s.version) for s in specifier if s.operator in (">=", "==", "~=")]
    return max(lows) if lows else None


def test_every_pin_is_exact_and_hashed(lock: dict[str, tuple[str, list[str]]]) -> None:
    assert lock
    for name, (spec, hashes) in lock.items():
        assert re.fullmatch(r"==[0-9][0-9A-Za-z.+!-]*", spec), f"{name}: {spec} is not exact"
        assert hashes, f"{name}: no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    # no index, find-links or editable line that would fetch from elsewhere
    text = LOCK.read_text()
    assert not re.search(r"^\s*(-e|--index-url|--extra-index-url|--find-links|-f|-i)\b", text, re.M)


def test_lock_pins_every_runtime_dependency_within_pyproject(
    lock: dict[str, tuple[str, list[str]]],
) -> None:
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in lock, f"requirements.lock lacks {requirement.name}: run scripts/lock"
        version = pinned(lock, name)
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside pyproject's {requirement}: "
            "run scripts/lock"
        )


def test_lock_pins_the_build_backend(lock: dict[str, tuple[str, list[str]]]) -> None:
    """The image builds secretsync offline (--no-build-isolation) with the locked backend."""
    for requirement in build_requirements():
        version = pinned(lock, requirement.name)
        assert requirement.specifier.contains(version, prereleases=True), requirement


@pytest.mark.parametrize("name", sorted(DIRECT_ADVISORIES))
def test_floors_exclude_releases_with_published_advisories(name: str) -> None:
    fixed, advisories = DIRECT_ADVISORIES[name]
    (requirement,) = [r for r in runtime_requirements() if canonicalize_name(r.name) == name]
    low = floor(requirement.specifier)
    assert low is not None and low >= Version(fixed), (
        f"pyproject.toml allows {requirement}: releases before {fixed} have {advisories}"
    )


@pytest.mark.parametrize("name", sorted(TRANSITIVE_ADVISORIES))
def test_locked_transitive_pins_are_past_published_advisories(
    name: str, lock: dict[str, tuple[str, list[str]]]
) -> None:
    fixed, advisories = TRANSITIVE_ADVISORIES[name]
    version = pinned(lock, name)
    assert version >= Version(fixed), f"requirements.lock pins {name}=={version}: {advisories}"


def test_the_floor_check_catches_an_old_floor() -> None:
    """The floor rule can fail: pyproject's former floors are refused."""
    for text, fixed in (("aiohttp>=3.9", "3.14.3"), ("cryptography>=42.0", "50.0.0")):
        low = floor(Requirement(text).specifier)
        assert low is not None and low < Version(fixed)
    assert floor(Requirement("kubernetes").specifier) is None


def test_the_lock_parser_refuses_what_it_does_not_know() -> None:
    with pytest.raises(AssertionError, match="not a pin"):
        parse_lock("git+https://example.invalid/x.git\n")
    assert parse_lock("a==1 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via b\n") == {
        "a": ("==1", ["sha256:" + "0" * 64])
    }


def test_dockerfile_installs_only_from_the_lock_with_hashes() -> None:
    build = dockerfile_stages(DOCKERFILE.read_text())[0]
    copies = [arg for op, arg in build["instructions"] if op == "COPY"]
    assert any("requirements.lock" in c.split()[:-1] for c in copies), copies
    runs = " ".join(arg for op, arg in build["instructions"] if op == "RUN")
    installs = [c.strip() for c in runs.split("&&") if " install " in c]
    assert len(installs) == 2, installs
    deps, package = installs
    assert "--require-hashes" in deps.split()
    assert "-r /src/requirements.lock" in deps
    assert "--only-binary=:all:" in deps.split()  # no sdist built from unreviewed source
    # secretsync itself: nothing resolved, nothing fetched, the locked backend builds it
    assert {"--no-deps", "--no-index", "--no-build-isolation"} <= set(package.split())
    assert package.split()[-1] == "/src"
    assert re.search(r"pip check\b", runs), "the image proves the lock complete"
