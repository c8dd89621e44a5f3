"""The API reference covers the public API, and the public API says what a caller must know."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import wool
import wool.events
import wool.otel
import wool.testing

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
_DIRECTIVE = re.compile(r"^\s*\.\. (?:auto\w+|py:\w+):: (?:wool\.)?([\w.]+)", re.MULTILINE)

PUBLIC = sorted(name for name in wool.__all__ if not name.startswith("__"))


def documented_names() -> set[str]:
    names: set[str] = set()
    for page in REFERENCE.glob("*.md"):
        names.update(_DIRECTIVE.findall(page.read_text()))
    return names


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_reference_entry(name: str) -> None:
    assert name in documented_names(), f"wool.{name} is in no page of docs/reference/"


# The public modules beside the package itself whose names users import.
MODULES = [wool.events, wool.otel, wool.testing]


@pytest.mark.parametrize(
    "name", [f"{module.__name__}.{name}" for module in MODULES for name in module.__all__]
)
def test_every_public_name_of_a_public_module_has_a_reference_entry(name: str) -> None:
    short = name.rsplit(".", 1)[1]
    documented = documented_names()
    assert name.removeprefix("wool.") in documented or (
        # wool.TaskEvent is wool.events.TaskEvent; the fixtures are documented as wool_pool
        name.startswith(("wool.events.", "wool.testing.")) and short in documented
    ), f"{name} is in no page of docs/reference/"


@pytest.mark.parametrize("name", [n for n in PUBLIC if inspect.isclass(getattr(wool, n))])
def test_every_public_class_has_its_own_docstring(name: str) -> None:
    cls = getattr(wool, name)
    assert cls.__doc__ and cls.__doc__.strip(), f"wool.{name} has no docstring"
    # A dataclass without one gets a generated "Name(field, ...)" docstring.
    assert not cls.__doc__.startswith(f"{name}("), f"wool.{name} has no docstring"


def test_what_a_caller_awaits_lists_what_it_raises() -> None:
    entered = [
        wool.LocalDiscovery.publisher,
        wool.LocalDiscovery.subscriber,
        wool.LanDiscovery.publisher,
        wool.LanDiscovery.subscriber,
    ]
    for obj in (wool.Routine, wool.WorkerPool, wool.DiscoveryPublisherLike.publish, *entered):
        assert "Raises:" in (obj.__doc__ or ""), obj
    for error in ("NoPoolError", "SerializationError", "WorkerLost", "TaskException"):
        assert f"wool.{error}:" in (wool.Routine.__doc__ or "")
    for error in ("WorkerStartError", "NoWorkersAvailable"):
        assert f"wool.{error}:" in (wool.WorkerPool.__doc__ or "")


def test_the_plugin_names_its_fixtures_in_the_reference() -> None:
    page = (REFERENCE / "testing.md").read_text()
    for name in ("wool_pool", "wool_pool_options", "DEFAULT_SIZE", "SETTLE_SECONDS"):
        assert name in wool.testing.__all__
        assert f":: {name}" in page or f":: wool.testing.{name}" in page, name
