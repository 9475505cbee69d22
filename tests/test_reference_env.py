"""tests/reference_env.py: a reference venv that cannot be made says why and leaves nothing half-made behind; a
pinned torch that the project already holds is linked in, not installed again."""

from __future__ import annotations

from pathlib import Path

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


def test_a_pinned_torch_the_project_holds_is_linked_not_installed(tmp_path):
    import importlib.metadata
    import subprocess

    version = importlib.metadata.version("torch")
    # --no-index: no registry is asked; the pin is met by the project's torch linked in beforehand, not by a wheel
    python = _venv("linked", (("--no-index", "--no-deps", f"torch=={version.split('+')[0]}"),), cache=tmp_path)
    found = subprocess.run([str(python), "-c", "import importlib.metadata as m, sys; "
                            "print(m.version('torch')); print(m.distribution('torch').locate_file(''))"],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    assert found[0] == version
    assert found[1].startswith(str(tmp_path / "linked"))  # the venv's own files, not a path into the project's
    ours = tmp_path / "linked" / "lib" / found[1].split("/lib/")[1] / "torch" / "__init__.py"
    project = Path(importlib.metadata.distribution("torch").locate_file("torch/__init__.py"))
    assert ours.stat().st_ino == project.stat().st_ino  # same bytes on disk, nothing copied
    assert "Requirement already satisfied: torch==" in (tmp_path / "linked.log").read_text()
