"""docker/pip_build_config.py: whatever the host's pip configuration holds, the image build gets a pip.conf
and the local paths it names (mounted under a prefix, the conf rewritten to match), and nothing host-only.
Synthetic `pip config list` listings over real files, and this host's own configuration."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docker"))

import pip_build_config as pbc  # noqa: E402


def conf_of(config: pbc.BuildPipConfig) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read_string(config.conf)
    return parser


def test_no_configuration_at_all_gives_an_empty_conf_and_no_mounts():
    config = pbc.build_config(pbc.parse_listing(""))
    assert config.conf == "" and config.volumes == () and config.missing == ()


def test_a_constraint_file_is_kept_and_mounted(tmp_path):
    constraints = tmp_path / "xdg" / "pip" / "constraints.txt"
    constraints.parent.mkdir(parents=True)
    constraints.write_text("torch<=2.14.1\n")
    config = pbc.build_config(pbc.parse_listing(f"global.constraint='{constraints}'\n"))
    assert conf_of(config)["global"]["constraint"] == pbc.in_build(str(constraints))
    assert config.volumes == (str(constraints),)


def test_a_file_index_mounts_the_folder_its_relative_links_point_into(tmp_path):
    (tmp_path / "pypi" / "simple" / "six").mkdir(parents=True)
    (tmp_path / "pypi" / "files").mkdir()
    listing = f"global.extra-index-url='file://{tmp_path}/pypi/simple https://mirror.example/simple'\n"
    config = pbc.build_config(pbc.parse_listing(listing))
    assert conf_of(config)["global"]["extra-index-url"].split() == [
        f"file://{pbc.BUILD_ROOT}{tmp_path}/pypi/simple", "https://mirror.example/simple"]
    assert config.volumes == (str(tmp_path / "pypi"),)


def test_find_links_directories_and_the_ca_bundle_are_mounted_and_host_only_options_dropped(tmp_path):
    wheels, cert = tmp_path / "wheels", tmp_path / "ca.crt"
    wheels.mkdir()
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    listing = (f"global.find-links='{wheels}'\n"
               f"global.cert='{cert}'\n"
               f"global.cache-dir='{tmp_path / 'cache'}'\n"
               "install.no-compile='1'\n")
    config = pbc.build_config(pbc.parse_listing(listing))
    conf = conf_of(config)
    assert conf["global"]["find-links"] == pbc.in_build(str(wheels))
    assert conf["global"]["cert"] == pbc.in_build(str(cert))
    assert "cache-dir" not in conf["global"]
    assert conf["install"]["no-compile"] == "1"
    assert config.volumes == tuple(sorted([str(cert), str(wheels)]))


def test_environment_variables_win_over_files_and_missing_paths_are_reported(tmp_path):
    (tmp_path / "env-wheels").mkdir()
    listing = (f":env:.find-links='{tmp_path / 'env-wheels'}'\n"
               f"global.find-links='{tmp_path / 'file-wheels'}'\n"
               f"global.constraint='{tmp_path / 'gone.txt'}'\n")
    config = pbc.build_config(pbc.parse_listing(listing))
    assert conf_of(config)["global"]["find-links"] == pbc.in_build(str(tmp_path / "env-wheels"))
    assert config.volumes == (str(tmp_path / "env-wheels"),)
    assert config.missing == (str(tmp_path / "gone.txt"),)


def test_paths_inside_a_mounted_folder_need_no_mount_of_their_own(tmp_path):
    (tmp_path / "opt" / "wheels").mkdir(parents=True)
    (tmp_path / "opt" / "simple").mkdir()
    listing = (f"global.index-url='file://{tmp_path}/opt/simple'\n"
               f"global.find-links='{tmp_path}/opt/wheels'\n")
    assert pbc.build_config(pbc.parse_listing(listing)).volumes == (str(tmp_path / "opt"),)


def test_the_hosts_own_configuration_reaches_the_build_whole(tmp_path):
    """This machine's real `pip config list`: every local path it names exists and is mounted."""
    result = subprocess.run([sys.executable, str(ROOT / "docker" / "pip_build_config.py"),
                             str(tmp_path / "pip.conf"), str(tmp_path / "volumes")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    sections = pbc.parse_listing(pbc.host_listing())
    mounts = [line.split(":") for line in (tmp_path / "volumes").read_text().split()]
    assert all(build == pbc.in_build(host) for host, build in mounts)
    volumes = [host for host, _ in mounts]
    for options in sections.values():
        for name, value in options.items():
            if name in pbc.HOST_ONLY_OPTIONS:
                continue
            for token in value.split():
                path = pbc.local_path(token)
                if path and Path(path).exists():
                    assert any(path == v or path.startswith(v.rstrip("/") + "/") for v in volumes), (name, path)
    written = configparser.ConfigParser()
    written.read(tmp_path / "pip.conf")
    for section, options in sections.items():
        if set(options) - pbc.HOST_ONLY_OPTIONS:
            assert written.has_section(section), section


@pytest.mark.parametrize("bad", ["no equals sign", "=", "global.='x'"])
def test_lines_that_are_no_settings_are_skipped(bad):
    assert pbc.parse_listing(bad) == {}
