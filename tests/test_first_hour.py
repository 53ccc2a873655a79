"""What a new user met in the first hour on a fresh machine (issue 18's list): each message
true, each piece of advice one that can be followed, bad input an error."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from sd_env import sources, verify
from sd_env.cli import main
from tests.conftest import TPU_PATCH, git, tiny_component
from tests.test_install import make_sdist

# pip download's own words for accelerate==9.9.9 with Python 3.9 (PyPI, 2026).
PIP_NO_SUCH_VERSION = (
    "ERROR: Ignored the following versions that require a different python version: 1.11.0 Requires-Python "
    ">=3.10.0; 1.16.0 Requires-Python >=3.11.0\n"
    "ERROR: Could not find a version that satisfies the requirement accelerate==9.9.9 (from versions: 0.0.1, "
    "0.16.0, 0.30.0rc0, 0.30.0, 1.0.0rc1, 1.10.1)\n"
    "ERROR: No matching distribution found for accelerate==9.9.9\n")


def test_a_version_the_index_lacks_is_no_such_release_with_the_newest():
    error = sources.no_such_release("accelerate", "9.9.9", PIP_NO_SUCH_VERSION)
    assert error is not None and error.exit_code == 2
    assert error.message == ("accelerate 9.9.9: no such release on the package index (its newest sdist for this "
                             "Python is 1.10.1; 1.16.0 needs Python >=3.11.0)")
    assert "accelerate==1.10.1" in error.hint
    # No list of versions: the index did not answer, which is not a missing release.
    offline = "ERROR: Could not find a version that satisfies the requirement x==1 (from versions: none)\n"
    assert sources.no_such_release("x", "1", offline) is None


def test_repatch_to_a_release_that_does_not_exist_says_so(project, upstream, fresh_target, tmp_path, monkeypatch,
                                                          capsys):
    make_sdist(upstream, tmp_path / "index")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    project.add_patch("tiny-tpu.diff", upstream.diff(TPU_PATCH))
    comp = tiny_component(upstream, git(upstream.repo, "rev-parse", "HEAD"), ["tiny-tpu.diff"])
    comp["git"] = (tmp_path / "gone" / "tinypkg.git").as_uri()  # git cannot reach it: the sdist fallback
    project.write_manifest([comp])
    assert project.cli("install", python=fresh_target) == 0
    capsys.readouterr()
    assert project.cli("repatch", "--to", "tinypkg==9.9.9", python=fresh_target) == 2
    err = capsys.readouterr().err
    assert "error: tinypkg 9.9.9: no such release on the package index (its newest sdist for this Python is 1.0)" \
        in err
    assert "hint: pick a released version, e.g. tinypkg==1.0" in err
    # Neither pip's raw output nor a hint about reaching PyPI, which answered.
    assert "Could not find a version" not in err and "needs PyPI or a mirror" not in err
    assert "library code is that of" not in err  # said only of an sdist that was downloaded


def test_a_torch_tpu_wheel_path_that_does_not_exist_is_bad_input(project, upstream, fresh_target, capsys):
    project.write_manifest([tiny_component(upstream, git(upstream.repo, "rev-parse", "HEAD"))])
    assert project.cli("install", "--json", "--torch-tpu-wheel", "/nonexistent.whl", python=fresh_target) == 2
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["error"].startswith("no torch_tpu wheel at /nonexistent.whl")
    assert not (project.home / "src" / "tinypkg").exists()  # refused before anything was installed


def test_a_mistyped_command_gets_the_one_it_resembles(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["verfy"])
    assert exc.value.code == 2
    assert "did you mean verify?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["zzzz"])
    assert "did you mean" not in capsys.readouterr().err


def test_the_ulimit_advice_can_be_followed_under_a_lower_hard_limit():
    """verify's advice, run as it says in a shell whose hard limit is below the tutorial's 65535
    (20000 where the issue was seen; 4000 here, since an ordinary user can lower it too)."""
    code = ("import json, resource; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4000)); "
            "from sd_env import verify; print(json.dumps(verify.check_ulimit().detail))")
    detail = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    advised = re.findall(r"`(ulimit -n \d+)`", detail)
    assert advised == ["ulimit -n 4000"], detail
    shell = subprocess.run(["bash", "-c", f"ulimit -Sn 1024 && ulimit -Hn 4000 && {advised[0]} && ulimit -Sn"],
                           capture_output=True, text=True)
    assert shell.returncode == 0 and shell.stdout.strip() == "4000", shell.stderr
    assert "the hard limit is 4000" in detail and "* hard nofile 65535" in detail and "limits.conf" in detail
    # With room under the hard limit, the tutorial's own command.
    assert "`ulimit -n 65535`" in verify.check_ulimit((1024, 65535)).detail
    assert verify.check_ulimit((65535, 65535)).status == "ok"
