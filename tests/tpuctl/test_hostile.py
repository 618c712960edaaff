"""Hostile values against a real sshd worker: every setting that reaches a worker, fed quotes, `$()`,
backticks, newlines, heredoc terminators, leading dashes, `..`, spaces and non-ASCII, from an
explicit corpus and from hypothesis.

For each value, exactly one of two things may happen: tpuctl refuses it with one line and exit 2,
or the worker sees exactly the literal value. And no marker command ever runs.

The worker, its origin and the synced checkout are shared by the module's tests (one sshd for all
examples); each example writes the target's settings to tpuctl.toml, so NUL and other characters no
command line can carry reach tpuctl too.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import git, make_origin, next_address, wait_for
from tests.tpuctl.helpers import Project, make_project, run
from tpuctl.sim.conda import install_conda
from tpuctl.sim.sshd import SshdWorker

EXAMPLES = settings(max_examples=8, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_names = itertools.count()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, client_key):
    """One worker, a synced checkout, a marker folder that must stay empty, and the CLI's cwd."""
    root = tmp_path_factory.mktemp("hostile")
    worker = SshdWorker(root / "worker", next_address(), client_key.with_suffix(".pub").read_text()).start()
    markers = root / "markers"
    markers.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        project = make_project(root, [worker], make_origin(root), client_key, patch)
        project.write_env()
        assert run("sync").code == 0
        try:
            yield Hostile(project, markers)
        finally:
            worker.stop()


class Hostile:
    def __init__(self, project: Project, markers: Path):
        self.project = project
        self.markers = markers
        self.home = project.workers[0].home

    def configure(self, **changes) -> None:
        self.project.write_config(**changes)

    def marker_commands(self) -> list[str]:
        """Ways a value could break out of its quoting, each of which would create a file in markers/."""
        m = self.markers
        return [f"$(touch {m}/dollar)", f"`touch {m}/backtick`", f"';touch {m}/single;'", f'";touch {m}/double;"',
                f"\nTPUCTL_RUNNER_EOF\ntouch {m}/runner-eof #", f"\nEOF\ntouch {m}/eof\n", f"${{IFS}}$(touch {m}/ifs)"]

    def check(self, result, literal) -> str:
        """Refused with one line and exit 2, or `literal()` (asserting the worker saw exactly the value)."""
        assert not list(self.markers.iterdir()), f"a marker command ran: {list(self.markers.iterdir())}"
        if result.code == 2:
            assert result.err.startswith("error: ") and len(result.err.strip().splitlines()) == 1, result.err
            return "refused"
        assert result.code == 0, result.all
        literal()
        assert not list(self.markers.iterdir()), f"a marker command ran: {list(self.markers.iterdir())}"
        return "literal"

    def launch_and_wait(self, *args: str, name: str | None = None):
        name = name or f"h{next(_names)}"
        result = run("launch", "--name", name, *args)
        if result.code == 0:
            wait_for(lambda: (self.home / "repo" / "logs" / f"{name}_latest.exit").exists())
        return result

    def seen_file(self) -> Path:
        path = self.home / "seen" / f"s{next(_names)}"
        path.parent.mkdir(exist_ok=True)
        return path


def expect_file(path: Path, expected: bytes) -> None:
    wait_for(lambda: path.exists())
    assert path.read_bytes() == expected, f"the worker saw {path.read_bytes()!r}, expected {expected!r}"


# Text that tries every way out of a quoted word: shell syntax, line breaks, terminators, dashes, dots,
# spaces, non-ASCII and the characters that reorder text on a terminal.
PIECES = ["'", '"', "`", "$", "$(", ")", "${", "}", "\\", ";", "|", "&", "<", ">", "*", "?", "[", "]", "!", "#", "~",
          " ", "\t", "\n", "\r", "-", "--", ".", "..", "/", "=", "EOF", "TPUCTL_RUNNER_EOF", "é", "中", "\u202e", "\x1b[31m"]


def hostile_text(markers: list[str], allow_newline: bool = True) -> st.SearchStrategy[str]:
    pieces = [p for p in PIECES + markers if allow_newline or "\n" not in p]
    return st.lists(st.sampled_from(pieces) | st.text(min_size=1, max_size=3), min_size=1, max_size=6).map("".join) \
        .filter(lambda text: "\0" not in text and (allow_newline or "\n" not in text))


def corpus(h: Hostile) -> list[str]:
    return [*h.marker_commands(), "-rf", "a b..é中\u202e"]


# -- the defects as first reported --------------------------------------------------------------

@pytest.mark.parametrize("setting", ["env_file", "venv", "conda_env"])
def test_a_setting_that_holds_a_command_never_runs_it(hostile, setting):
    values = {"env_file": "~/x$(touch {m}/pwned)", "venv": "/opt/v$(touch {m}/pwned)", "conda_env": "x$(touch {m}/pwned)"}
    hostile.configure(**{setting: values[setting].format(m=hostile.markers)})
    result = hostile.launch_and_wait("--worker", "0", "--", "echo", "hi")
    dry = run("launch", "--dry-run", "--", "echo", "hi")
    hostile.configure()
    assert not list(hostile.markers.iterdir())
    assert result.code in (0, 2), result.all
    assert dry.code == 2 or "launch_preflight.sh" in dry.out  # --dry-run shows the preflight too


def test_the_run_sees_a_value_with_a_heredoc_terminator_exactly(hostile):
    value = f"a\nTPUCTL_RUNNER_EOF\ntouch {hostile.markers}/pwned #"
    seen = hostile.seen_file()
    result = hostile.launch_and_wait("--env", f"X={value}", "--", "bash", "-c", 'printf %s "$X" > "$1"', "_", str(seen))
    assert result.code == 0, result.all
    expect_file(seen, value.encode())
    assert not list(hostile.markers.iterdir())


def test_a_repo_url_that_is_a_git_option_is_refused(hostile):
    result = run("--set", f"repo_url=--upload-pack=touch {hostile.markers}/pwned;", "sync")
    assert result.code == 2 and "repo_url: expected a git URL" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not list(hostile.markers.iterdir())


# -- every setting, corpus and hypothesis ------------------------------------------------------

def check_env_and_words(h: Hostile, values: list[str]) -> str:
    """`--env V<i>=value` and command words: the run writes what it received to files, byte for byte."""
    seen = h.home / "seen" / f"w{next(_names)}"
    seen.mkdir(parents=True)
    script = ('i=0; for w in "$@"; do printf %s "$w" > "$SEEN/word$i"; v="V$i"; printf %s "${!v}" > "$SEEN/env$i"; '
              'i=$((i+1)); done')
    args = [arg for i, v in enumerate(values) for arg in ("--env", f"V{i}={v}")]
    result = h.launch_and_wait("--env", f"SEEN={seen}", *args, "--", "bash", "-c", script, "_", *values)

    def literal() -> None:
        for i, value in enumerate(values):
            expect_file(seen / f"word{i}", value.encode())
            expect_file(seen / f"env{i}", value.encode())

    return h.check(result, literal)


def check_run_name(h: Hostile, value: str) -> str:
    result = run("launch", "--name", value, "--", "true")
    return h.check(result, lambda: wait_for(lambda: (h.home / "repo" / "logs" / f"{value}_latest.exit").exists()))


def check_env_file(h: Hostile, value: str) -> str:
    """env_file = ~/<value>: `secrets push` writes exactly that path."""
    h.configure(env_file="~/" + value)
    result = run("secrets", "push")
    h.configure()
    return h.check(result, lambda: expect_file(h.home / value, (h.project.folder / ".env").read_bytes()))


def check_repo_path(h: Hostile, value: str) -> str:
    h.configure(repo_path="~/" + value)
    result = run("sync")
    h.configure()

    def literal() -> None:
        assert (h.home / value / ".git").is_dir(), f"no checkout at {value!r}"

    return h.check(result, literal)


def check_venv(h: Hostile, value: str) -> str:
    """venv = ~/<value>: an activate script there marks the run; the run shows it was sourced."""
    folder = h.home / value
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    (folder / "bin" / "activate").write_text("export TPUCTL_SEEN_VENV=yes\n")
    h.configure(venv="~/" + value)
    seen = h.seen_file()
    result = h.launch_and_wait("--", "bash", "-c", 'printf %s "$TPUCTL_SEEN_VENV" > "$1"', "_", str(seen))
    h.configure()
    return h.check(result, lambda: expect_file(seen, b"yes"))


def check_conda_env(h: Hostile, value: str) -> str:
    """conda_env = <value>: the conda stand-in has an env of that exact name; the run shows it active."""
    if re.fullmatch(r"[^/\0]+", value) and value not in (".", ".."):
        install_conda(h.home, {value: Path(sys.prefix)})
    h.configure(conda_env=value)
    seen = h.seen_file()
    result = h.launch_and_wait("--", "bash", "-c", 'printf %s "$CONDA_DEFAULT_ENV" > "$1"', "_", str(seen))
    h.configure()
    return h.check(result, lambda: expect_file(seen, value.encode()))


def check_repo_url(h: Hostile, value: str) -> str:
    """repo_url = <home>/origins/<value>: a copy of the origin at that exact path is what gets cloned."""
    url = f"{h.home}/origins/{path_safe(value)}"
    if "\0" not in url:
        shutil.copytree(h.project.origin, url, dirs_exist_ok=True)
    repo = f"url{next(_names)}"
    h.configure(repo_url=url, repo_path=f"~/{repo}")
    result = run("sync")
    h.configure()
    return h.check(result, lambda: git("remote", "get-url", "origin", cwd=h.home / repo) == url or pytest.fail(url))


def check_branch(h: Hostile, value: str) -> str:
    """branch = <value>: pushed to the origin when git allows the name; the worker checks it out."""
    work = h.project.origin.parent / "origin-work"
    pushed = "\0" not in value and subprocess.run(["git", "push", "--quiet", "origin", f"HEAD:refs/heads/{value}"],
                                                   cwd=work, capture_output=True).returncode == 0
    repo = f"branch{next(_names)}"
    h.configure(branch=value, repo_path=f"~/{repo}")
    result = run("sync")
    h.configure()
    if not pushed:
        assert result.code == 2, f"a branch name git refuses was not refused: {value!r}: {result.all}"
    return h.check(result, lambda: git("rev-parse", "--abbrev-ref", "HEAD", cwd=h.home / repo) == value
                   or pytest.fail(value))


def check_env_value(h: Hostile, value: str) -> str:
    """A .env value, written in dotenv's single-quoted form: the run sees exactly what python-dotenv reads."""
    quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    env = h.project.folder / ".env"
    env.write_text(f"HOSTILE={quoted}\n")
    expected = dotenv_values(env)["HOSTILE"]
    pushed = run("secrets", "push")
    if pushed.code != 0:
        return h.check(pushed, lambda: None)
    seen = h.seen_file()
    result = h.launch_and_wait("--", "bash", "-c", 'printf %s "$HOSTILE" > "$1"', "_", str(seen))
    return h.check(result, lambda: expect_file(seen, expected.encode()))


PATH_CHECKS = {"env_file": check_env_file, "repo_path": check_repo_path, "venv": check_venv}
OTHER_CHECKS = {"conda_env": check_conda_env, "repo_url": check_repo_url, "branch": check_branch,
                "run name": check_run_name, ".env value": check_env_value}


def path_safe(value: str) -> str:
    """A fresh folder for `value` inside the worker's home: no component may be exactly `.` or `..`
    (a `..` inside a name, or `a/../b` below a fresh folder, stays in)."""
    parts = [part for part in value.split("/") if part not in ("", ".", "..")]
    return "/".join([f"p{next(_names)}", *parts])


def test_corpus_env_values_and_command_words(hostile):
    assert check_env_and_words(hostile, corpus(hostile)) == "literal"


@pytest.mark.parametrize("setting", [*PATH_CHECKS, *OTHER_CHECKS])
def test_corpus(hostile, setting):
    check = PATH_CHECKS.get(setting) or OTHER_CHECKS[setting]
    outcomes = {value: check(hostile, path_safe(value) + "/a/../b" if setting in PATH_CHECKS else value)
                for value in corpus(hostile)}
    assert set(outcomes.values()) <= {"refused", "literal"}
    # Values without control characters are valid paths, URLs and dotenv values: they must get through
    # (but ${...}, which python-dotenv expands from the reader's environment, see tpuctl.envfile).
    if setting in (*PATH_CHECKS, "repo_url", ".env value"):
        refused = [v for v, outcome in outcomes.items() if outcome == "refused"]
        assert [v for v in refused if "\n" not in v and not (setting == ".env value" and "${" in v)] == []


@EXAMPLES
@given(data=st.data())
def test_hypothesis_env_values_and_command_words(hostile, data):
    values = data.draw(st.lists(hostile_text(hostile.marker_commands()), min_size=1, max_size=4))
    check_env_and_words(hostile, values)


@EXAMPLES
@given(data=st.data())
@pytest.mark.parametrize("setting", [*PATH_CHECKS, *OTHER_CHECKS])
def test_hypothesis(hostile, setting, data):
    newline = setting not in ("run name",)
    value = data.draw(hostile_text(hostile.marker_commands(), allow_newline=newline))
    if setting in PATH_CHECKS:
        PATH_CHECKS[setting](hostile, path_safe(value))
    else:
        OTHER_CHECKS[setting](hostile, value)
