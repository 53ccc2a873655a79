"""Settings from config files: flag > environment > project (sd-env.toml) > user (config.toml)."""

from __future__ import annotations

import json
import subprocess

import pytest

from sd_env.cli import main
from tests.conftest import TPU_PATCH, git, tiny_component


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A user config folder of the test's own; no mirror variable from the caller."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SD_ENV_GIT_MIRROR", raising=False)
    monkeypatch.delenv("SD_ENV_TORCH_TPU_WHEEL", raising=False)
    user = tmp_path / "xdg" / "sd-env" / "config.toml"
    user.parent.mkdir(parents=True)
    return user


def settings(project, capsys) -> dict:
    capsys.readouterr()
    assert project.cli("config", "--json") == 0
    return json.loads(capsys.readouterr().out)["settings"]


def test_precedence_flag_env_project_user(project, upstream, isolated, monkeypatch, capsys):
    project.write_manifest([tiny_component(upstream, None)])
    isolated.write_text('git-mirror = "https://user.example/gh"\nindex-url = "https://user.example/simple"\n')
    got = settings(project, capsys)
    assert got["git-mirror"] == {"key": "git-mirror", "value": "https://user.example/gh", "source": str(isolated)}
    assert got["torch-tpu-wheel"]["source"] == "default" and got["torch-tpu-wheel"]["value"] is None

    (project.root / "sd-env.toml").write_text('git-mirror = "mirrors"\n')  # relative to the file's folder
    got = settings(project, capsys)
    assert got["git-mirror"] == {"key": "git-mirror", "value": str(project.root / "mirrors"),
                                 "source": str(project.root / "sd-env.toml")}
    assert got["index-url"]["value"] == "https://user.example/simple"  # still from the user file

    monkeypatch.setenv("SD_ENV_GIT_MIRROR", "https://env.example/gh")
    got = settings(project, capsys)
    assert got["git-mirror"]["value"] == "https://env.example/gh" and got["git-mirror"]["source"] == \
        "$SD_ENV_GIT_MIRROR"
    assert project.cli("config") == 0
    table = capsys.readouterr().out
    assert "$SD_ENV_GIT_MIRROR" in table and f"read: {project.root / 'sd-env.toml'}" in table


def test_a_bad_config_key_is_named(project, upstream, isolated, capsys):
    project.write_manifest([tiny_component(upstream, None)])
    isolated.write_text('git_mirror = "x"\n')
    assert project.cli("config") == 2
    err = capsys.readouterr().err
    assert f"{isolated}: unknown key 'git_mirror'" in err and "git-mirror" in err


def test_install_uses_the_project_configs_mirror(project, upstream, fresh_target, isolated, tmp_path):
    mirror = project.root / "mirrors"
    (mirror / "acme").mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(upstream.repo), str(mirror / "acme" / "tinypkg.git")],
                   check=True)
    commit = git(upstream.repo, "rev-parse", "HEAD")
    project.add_patch("tiny-tpu.diff", upstream.diff(TPU_PATCH))
    comp = tiny_component(upstream, commit, ["tiny-tpu.diff"], sdist=False)
    comp["git"] = "https://github.com/acme/tinypkg.git"  # unreachable here: only the mirror can serve it
    project.write_manifest([comp])
    (project.root / "sd-env.toml").write_text('git-mirror = "mirrors"\n')
    assert project.cli("install", python=fresh_target) == 0
    assert git(project.home / "src" / "tinypkg", "rev-parse", "HEAD") == commit


def test_flag_beats_every_file(project, upstream, isolated, capsys):
    project.write_manifest([tiny_component(upstream, None)])
    isolated.write_text('git-mirror = "https://user.example/gh"\n')
    (project.root / "sd-env.toml").write_text('git-mirror = "https://project.example/gh"\n')
    from sd_env.core import config

    got = config.resolve({"git-mirror": "https://flag.example/gh"}, project.manifest)
    assert (got["git-mirror"].value, got["git-mirror"].source) == ("https://flag.example/gh", "--git-mirror")
    assert main(["config", "-m", str(project.manifest), "--json"]) == 0
