"""tests/reference_env.py: a reference venv that cannot be made says why and leaves nothing half-made behind."""

from __future__ import annotations

import pytest

from reference_env import ReferenceUnavailable, _venv

pytestmark = pytest.mark.server


def test_a_venv_that_cannot_be_installed_is_refused_by_name_and_removed(tmp_path):
    # --no-index: pip looks nowhere, so this fails at once and asks no registry anything
    installs = (("--no-index", "searchbox-reference-that-is-not-anywhere"),)
    with pytest.raises(ReferenceUnavailable) as caught:
        _venv("broken", installs, cache=tmp_path)
    message = str(caught.value)
    assert "cannot make the broken reference venv" in message
    assert "searchbox-reference-that-is-not-anywhere" in message and str(tmp_path / "broken.log") in message
    # removed: the next session tries again rather than trusting a half-made venv
    assert not (tmp_path / "broken").exists() and not (tmp_path / "broken" / ".complete").exists()
