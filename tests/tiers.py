"""The test tiers, and how a test gets one: from what it declares and from what its fixtures load or start.

`unit` (no model, no server), `app` (a real model in this process), `server` (real processes: servers,
packaging scripts, reference venvs, end-to-end builds), `soak` (timing, resident memory, load). A fixture says
what it does where it is defined (`@implies("app")` under `@pytest.fixture`); a test is at least of the tier of
every fixture in its closure, so a test that only uses a fixture which uses a model builder is `app` without
anyone listing it.
"""

from __future__ import annotations

TIERS = ("unit", "app", "server", "soak")


def implies(tier: str):
    """Marks a fixture function: every test that uses it, directly or through other fixtures, is at least `tier`."""
    assert tier in TIERS, tier

    def mark(function):
        function.implied_tier = tier
        return function

    return mark


def fixture_tiers(item) -> list[str]:
    """The tiers implied by the fixtures in `item`'s closure (pytest resolves the closure; the last definition of a
    name is the one the test gets)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    found = []
    for definitions in info.name2fixturedefs.values():
        tier = getattr(definitions[-1].func, "implied_tier", None) if definitions else None
        if tier:
            found.append(tier)
    return found


def declared_tiers(item) -> list[str]:
    return [marker.name for marker in item.iter_markers() if marker.name in TIERS]


def tier_of(item) -> str:
    return max([*declared_tiers(item), *fixture_tiers(item), "unit"], key=TIERS.index)
