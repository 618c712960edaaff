"""Target configuration: file < environment < flags, shown by `tpuctl config`."""

from __future__ import annotations

import json

import tomlkit

from tests.tpuctl.helpers import run


def test_precedence_file_then_environment_then_flags(project1, monkeypatch):
    project1.write_config(branch="from-file", zone="us-central2-b", project="file-project")
    monkeypatch.setenv("TPUCTL_BRANCH", "from-env")
    monkeypatch.setenv("TPUCTL_ZONE", "europe-west4-a")
    shown = json.loads(run("--zone", "us-east5-a", "config", "--json").out)
    assert shown["values"]["project"] == "file-project"
    assert shown["sources"]["project"] == "tpuctl.toml [targets.sim]"
    assert shown["values"]["branch"] == "from-env" and shown["sources"]["branch"] == "TPUCTL_BRANCH (environment)"
    assert shown["values"]["zone"] == "us-east5-a" and shown["sources"]["zone"] == "flag"
    assert shown["values"]["user"] == "root" and shown["sources"]["user"] == "default"
    assert shown["remote_repo"] == "~/repo"
    table = run("config").out
    assert "tpuctl.toml [targets.sim]" in table and "TPUCTL_BRANCH (environment)" in table
    assert "defaults < tpuctl.toml [targets.NAME] < TPUCTL_<FIELD> environment < flags" in table


def test_several_targets_need_a_choice(project1):
    table = project1.target_table()
    project1.config_file.write_text(tomlkit.dumps({"targets": {"a": table, "b": {**table, "branch": "dev"}}}))
    refused = run("config")
    assert refused.code == 2 and "defines several targets (a, b)" in refused.err
    assert json.loads(run("--target", "b", "config", "--json").out)["values"]["branch"] == "dev"
    project1.config_file.write_text(tomlkit.dumps({"default_target": "b", "targets": {"a": table, "b": table}}))
    assert json.loads(run("config", "--json").out)["target"] == "b"


def test_repo_path_defaults_to_the_repository_name_in_home(project1):
    project1.write_config(repo_path="", repo_url="https://github.com/acme/grpo-tpu.git")
    assert json.loads(run("config", "--json").out)["remote_repo"] == "~/grpo-tpu"
