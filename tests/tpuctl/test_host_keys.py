"""Host keys: only pinned fingerprints are accepted; `tpuctl trust` shows and pins them."""

from __future__ import annotations

import tomllib

from tests.tpuctl.helpers import run
from tpuctl.sim.sshd import keygen


def test_unknown_key_is_refused_with_the_fingerprint_and_how_to_pin(project1):
    project1.write_config(host_keys=[])
    result = run("status")
    assert result.code == 1
    fingerprint = project1.workers[0].fingerprint
    assert f"unknown ssh-ed25519 host key {fingerprint}" in result.err
    assert "`tpuctl --target sim trust --worker 0 --write`" in result.err


def test_changed_key_is_refused_and_nothing_runs(project1, tmp_path):
    old = project1.workers[0].fingerprint
    worker = project1.workers[0]
    worker.stop()
    worker.host_key.unlink()
    worker.host_key.with_suffix(".pub").unlink()
    keygen(worker.host_key)  # the "VM" was rebuilt, or someone is in the middle
    worker.start()
    result = run("sync")
    assert result.code == 1
    assert f"presented host key {worker.fingerprint}, but {old} is pinned: the key CHANGED" in result.err
    assert "re-pin with `tpuctl --target sim trust --worker 0 --write --replace`" in result.err
    assert not project1.remote(0, "~/repo").exists()


def test_trust_shows_then_pins_keys_keeping_the_rest_of_the_file(project3):
    project3.write_config(host_keys=[])
    text = "# my project\n" + project3.config_file.read_text()
    project3.config_file.write_text(text)
    shown = run("trust")
    assert shown.code == 0
    for worker in project3.workers:
        assert f"ssh-ed25519 {worker.fingerprint}  not pinned" in shown.out
    assert run("trust", "--write").code == 0
    written = project3.config_file.read_text()
    assert written.startswith("# my project\n")
    assert tomllib.loads(written)["targets"]["sim"]["host_keys"] == [w.fingerprint for w in project3.workers]
    assert run("sync").code == 0
    again = run("trust")
    assert again.out.count("pinned") == 3 and "not pinned" not in again.out


def test_trust_write_refuses_to_replace_a_changed_pin_without_replace(project1):
    wrong = project1.workers[0].fingerprint[:-4] + "AAAA"
    project1.write_config(host_keys=[wrong])
    shown = run("trust")
    assert "CHANGED" in shown.out and wrong in shown.out
    refused = run("trust", "--write")
    assert refused.code == 2 and "--write --replace" in refused.err
    assert tomllib.loads(project1.config_file.read_text())["targets"]["sim"]["host_keys"] == [wrong]
    assert run("trust", "--write", "--replace").code == 0
    assert tomllib.loads(project1.config_file.read_text())["targets"]["sim"]["host_keys"] == [project1.workers[0].fingerprint]


def test_trust_fails_when_a_key_changed(project1):
    """Showing a CHANGED key is a failure (exit 1), not a report like any other."""
    project1.write_config(host_keys=[project1.workers[0].fingerprint[:-4] + "AAAA"])
    result = run("trust")
    assert result.code == 1
    assert "CHANGED" in result.out and "trust --write --replace" in result.err
