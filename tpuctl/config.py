"""Targets: the TPU VM (or plain SSH hosts) a command acts on.

A target's fields come from four layers, lowest to highest precedence:

    built-in defaults  <  tpuctl.toml [targets.NAME]  <  TPUCTL_<FIELD> environment  <  flags

`tpuctl config` prints the effective value of every field and the layer it came from.
Secrets never live here: they come only from the `.env` file that `tpuctl secrets push` copies.

Values are checked by one hand-written coercer (FIELD_KINDS, `coerce`) and Target's own checks, not by
pydantic as the trainer's config is: these settings are one flat table, read as text from the
environment and flags, and a pydantic Target, tried, came out longer (324 lines against 294), needed
a translation layer to keep naming the layer a bad value came from, and added about 35 ms of import
to every command.
"""

from __future__ import annotations

import base64
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tpuctl.console import BadInput
from tpuctl.pairs import NONEMPTY_KEY, split_pair

PROJECT_FILE = "tpuctl.toml"

# The versions this project pins (sglang-jax 0.1.0rc0 pins jax/jaxlib 0.10.2); verify-env compares
# the VM against them unless the target says otherwise.
DEFAULT_EXPECT_VERSIONS = {"python": "3.12", "jax": "0.10.2", "jaxlib": "0.10.2", "sglang-jax": "0.1.0rc0"}
DEFAULT_SMOKE_COMMAND = "trainer --preset smoke --set rollout.backend=sglang_jax"
# What `gcloud compute tpus tpu-vm ssh --tunnel-through-iap` runs as ssh's ProxyCommand; {instance} is the
# worker's instance name, which the TPU API publishes in the guest attribute `hostname`.
IAP_PROXY_COMMAND = ("gcloud compute start-iap-tunnel {instance} {port} --listen-on-stdin "
                     "--project {project} --zone {zone} --verbosity warning")
PROXY_PLACEHOLDERS = ("host", "port", "instance", "worker", "name", "project", "zone")

_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9][A-Za-z0-9.-]*))(?::(?P<port>\d+))?")
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_PROJECT = re.compile(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
_NODE_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_BRANCH_FORBIDDEN = re.compile(r"(^[-/.])|(\.\.)|([\s~^:?*\[\\\x00-\x1f\x7f]|@\{)|(/$)|(\.lock$)|(//)|(\.$)")
_KNOWN_HOST = re.compile(r"(?:\[[A-Za-z0-9.:-]+\]:\d{1,5}|[A-Za-z0-9][A-Za-z0-9.-]*) "
                         r"(?P<type>ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) (?P<key>[A-Za-z0-9+/]+={0,2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# conda's own rule for env names, or the absolute path of an env's prefix.
_CONDA_ENV = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|(?:/|~/)[^\x00-\x1f\x7f]*")
# What git may fetch from: a URL of a network or file transport, scp-like user@host:path, or an
# absolute path. Never an option (a leading '-'), never a transport::address (ext:: runs commands).
_REPO_URL = re.compile(r"(?:(?:https?|ssh|git|file)://[^\s\x00-\x1f\x7f]+"
                       r"|(?:[A-Za-z0-9_][A-Za-z0-9._-]*@)?[A-Za-z0-9][A-Za-z0-9.-]*:(?!:)[^\s\x00-\x1f\x7f]+"
                       r"|/[^\x00-\x1f\x7f]*)")
# The userinfo of a scheme://userinfo@host URL, up to the last '@' before the path (as git reads it).
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/]*)@")
_EXTRA = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
_PYTHON_VERSION = re.compile(r"3\.[0-9]{1,2}")
BACKENDS = ("tpu", "cpu", "gpu")
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_host(spec: str, default_port: int = 22) -> HostPort:
    """`host`, `host:port` or `[v6addr]:port`; the port defaults to `default_port`."""
    match = _HOST.fullmatch(spec.strip())
    port = int(match["port"]) if match and match["port"] else default_port
    if not match or not 1 <= port <= 65535:
        raise BadInput(f"bad host {spec!r}: expected host[:port] with a port from 1 to 65535")
    return HostPort(match["v6"] or match["name"], port)


@dataclass(frozen=True)
class Target:
    """One TPU VM (all its workers) or a list of SSH hosts, and how to reach and use it."""

    alias: str = "default"
    name: str = ""
    project: str = ""
    zone: str = ""
    user: str = "root"
    identity_file: str = ""
    hosts: tuple[str, ...] = ()
    host_keys: tuple[str, ...] = ()
    # SSH port of every worker without an explicit port (TPU VMs: 22; network_endpoints[].port is not SSH).
    ssh_port: int = 22
    internal_ip: bool = False
    tunnel_through_iap: bool = False
    proxy_command: str = ""
    tpu_api_endpoint: str = ""
    accelerator_type: str = ""
    runtime_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    repo_url: str = ""
    repo_path: str = ""
    branch: str = "main"
    # Private repositories (tpuctl.remote.git_auth): forward the SSH agent to sync's git only; or a
    # read-only deploy key (a local path) copied to the workers; and known_hosts lines of git hosts
    # besides the pinned github.com and gitlab.com.
    forward_agent: bool = False
    deploy_key: str = ""
    git_host_keys: tuple[str, ...] = ()
    env_file: str = "~/.env"
    conda_env: str = ""
    venv: str = ""
    # What `tpuctl setup` installs: the project with this extra of pyproject.toml, into a venv with this Python.
    setup_extra: str = "tpu"
    python_version: str = "3.12"
    coordinator_port: int = 8476
    # Seconds an SSH connection may stay silent before it counts as dropped (keepalives every third of it).
    ssh_timeout: int = 30
    expect_backend: str = "tpu"
    expect_versions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_EXPECT_VERSIONS))
    smoke_command: str = DEFAULT_SMOKE_COMMAND
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check(not self.name or _NODE_NAME.fullmatch(self.name), "name", self.name,
               "a TPU name: lowercase letters, digits and '-', starting with a letter, at most 63 characters")
        _check(not self.project or _PROJECT.fullmatch(self.project), "project", self.project,
               "a Google Cloud project ID such as 'my-project-123'")
        _check(not self.zone or _ZONE.fullmatch(self.zone), "zone", self.zone, "a zone such as 'us-central2-b'")
        _check(_USER.fullmatch(self.user), "user", self.user, "a POSIX user name such as 'root'")
        for spec in self.hosts:
            parse_host(spec)
        for key in self.host_keys:
            _check(not key or _FINGERPRINT.fullmatch(key), "host_keys", key,
                   "OpenSSH fingerprints of the form SHA256:<43 base64 characters>, one per worker")
        _check(not self.hosts or len(self.host_keys) <= len(self.hosts), "host_keys", f"{len(self.host_keys)} keys",
               f"at most one per host ({len(self.hosts)} hosts)")
        _check(not _BRANCH_FORBIDDEN.search(self.branch) and self.branch, "branch", self.branch, "a git branch name")
        for name in ("repo_path", "env_file", "venv"):
            value = getattr(self, name)
            _check(not value or (value.startswith(("/", "~/")) and not _CONTROL.search(value)), name, value,
                   "an absolute path or one starting with ~/, without control characters")
        _check(not self.conda_env or _CONDA_ENV.fullmatch(self.conda_env), "conda_env", self.conda_env,
               "a conda env name (letters, digits, '.', '_', '-') or the absolute path of its prefix")
        _check(not (self.conda_env and self.venv), "venv", self.venv, "either conda_env or venv, not both")
        _check(not self.setup_extra or _EXTRA.fullmatch(self.setup_extra), "setup_extra", self.setup_extra,
               "the name of an extra of pyproject.toml, such as 'tpu' or 'cpu' (empty: none)")
        _check(_PYTHON_VERSION.fullmatch(self.python_version), "python_version", self.python_version,
               "a Python version as major.minor, such as '3.12'")
        self._check_repo_url()
        _check(not _CONTROL.search(self.deploy_key), "deploy_key", self.deploy_key, "a path without control characters")
        for line in self.git_host_keys:
            _check(_valid_known_host(line), "git_host_keys", line,
                   "known_hosts lines 'HOST KEYTYPE BASE64KEY' (HOST or [HOST]:PORT, as ssh-keyscan prints them)")
        _check(1 <= self.ssh_timeout <= 3600, "ssh_timeout", self.ssh_timeout, "seconds from 1 to 3600")
        _check(1 <= self.coordinator_port <= 65535, "coordinator_port", self.coordinator_port, "a port from 1 to 65535")
        _check(self.expect_backend in BACKENDS, "expect_backend", self.expect_backend, f"one of {', '.join(BACKENDS)}")
        _check(1 <= self.ssh_port <= 65535, "ssh_port", self.ssh_port, "a port from 1 to 65535")
        _check(_valid_template(self.proxy_command), "proxy_command", self.proxy_command,
               "a command using only the placeholders " + " ".join(f"{{{p}}}" for p in PROXY_PLACEHOLDERS))
        _check(not self.tpu_api_endpoint or self.tpu_api_endpoint.startswith(("http://", "https://")),
               "tpu_api_endpoint", self.tpu_api_endpoint, "a URL such as https://tpu.googleapis.com")

    def _check_repo_url(self) -> None:
        """A git URL that carries no password: one would land in .git/config, ps and every message naming it."""
        userinfo = _URL_USERINFO.match(self.repo_url)
        shown = redact_url(self.repo_url)
        _check(not (userinfo and ":" in userinfo["userinfo"]), "repo_url", shown,
               "a URL without credentials; put the token in GIT_TOKEN in .env")
        _check(not self.repo_url or _REPO_URL.fullmatch(self.repo_url), "repo_url", shown,
               "a git URL (https://, ssh://, git://, file://), user@host:path or an absolute path")

    @property
    def remote_repo(self) -> str:
        """Where the repository lives on each worker: repo_path, or ~/<repository name>."""
        if self.repo_path:
            return self.repo_path
        stem = self.repo_url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git")
        if not stem:
            raise BadInput("repo_path is not set and cannot be derived: set repo_url or repo_path for the target")
        return f"~/{stem}"

    def host_ports(self) -> list[HostPort]:
        return [parse_host(spec, self.ssh_port) for spec in self.hosts]

    @property
    def proxy_template(self) -> str:
        """The ProxyCommand every SSH connection goes through: proxy_command, else IAP's when asked for."""
        return self.proxy_command or (IAP_PROXY_COMMAND if self.tunnel_through_iap else "")


def redact_url(url: str) -> str:
    """`url` with the userinfo of a scheme://userinfo@host URL replaced by ***, for messages."""
    return _URL_USERINFO.sub(lambda found: found["scheme"] + "***@", url, count=1)


def _check(ok: Any, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise BadInput(f"{key}: expected {expected}, received {value!r}")


def _valid_known_host(line: str) -> bool:
    """`host type key` (or `[host]:port type key`) whose base64 key really is of that type."""
    match = _KNOWN_HOST.fullmatch(line.strip())
    if not match:
        return False
    try:
        blob = base64.b64decode(match["key"], validate=True)
    except ValueError:
        return False
    length = int.from_bytes(blob[:4], "big")
    return blob[4:4 + length] == match["type"].encode()


def _valid_template(template: str) -> bool:
    try:
        template.format(**{name: "x" for name in PROXY_PLACEHOLDERS})
    except (KeyError, IndexError, ValueError):
        return False
    return True


# The one coercer's table: every setting's type, by its annotation. A setting of any other type fails here,
# at import, instead of falling through to a kind that reads it wrongly.
_KIND_OF_ANNOTATION = {"str": str, "int": int, "bool": bool, "tuple[str, ...]": tuple, "Mapping[str, str]": dict}
FIELD_KINDS: dict[str, type] = {f.name: _KIND_OF_ANNOTATION[f.type] for f in fields(Target)
                                if f.name not in ("alias", "sources")}


SETTINGS = tuple(FIELD_KINDS)


def env_name(key: str) -> str:
    return "TPUCTL_" + key.upper()


def coerce(key: str, raw: Any, origin: str) -> Any:
    """Turn a file, environment or flag value into the field's type, or say what was expected."""
    kind = FIELD_KINDS.get(key)
    if kind is None:
        raise BadInput(f"unknown setting {key!r} in {origin}; expected one of: {', '.join(sorted(FIELD_KINDS))}")
    if isinstance(raw, str) and kind is tuple:
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    elif isinstance(raw, str) and kind is dict:
        raw = _parse_pairs(key, raw, origin)
    elif isinstance(raw, str) and kind is int:
        raw = int(raw) if raw.strip().isdigit() else raw
    elif isinstance(raw, str) and kind is bool:
        raw = _BOOLEANS.get(raw.strip().lower(), raw)
    if kind is tuple and isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return tuple(raw)
    if kind is dict and isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
        return dict(raw)
    if kind in (int, str, bool) and type(raw) is kind:
        return raw
    expected = {tuple: "a list of strings", dict: "a table of strings", int: "an integer", str: "a string",
                bool: "true or false"}[kind]
    raise BadInput(f"{key} in {origin}: expected {expected}, received {raw!r}")


def _parse_pairs(key: str, raw: str, origin: str) -> dict[str, str]:
    pairs = [split_pair(item, NONEMPTY_KEY) for item in filter(None, (part.strip() for part in raw.split(",")))]
    if None in pairs:
        raise BadInput(f"{key} in {origin}: expected name=value pairs separated by commas, received {raw!r}")
    return {name.strip(): value.strip() for name, value in pairs}


def find_project_file(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return candidate
    return None


def read_project_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInput(f"cannot read {path}: expected UTF-8 text, found byte 0x{exc.object[exc.start]:02x} "
                       f"at offset {exc.start}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None
    unknown = set(data) - {"default_target", "targets"}
    if unknown:
        raise BadInput(f"{path}: unknown top-level key {sorted(unknown)[0]!r}; expected 'default_target' or [targets.NAME]")
    targets = data.get("targets", {})
    if not isinstance(targets, dict) or not all(isinstance(t, dict) for t in targets.values()):
        raise BadInput(f"{path}: expected [targets.NAME] tables, received {targets!r}")
    return data


def load_target(config_path: str | None = None, alias: str | None = None, flags: Mapping[str, str] | None = None,
                environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Target:
    """The target `alias` (else TPUCTL_TARGET, else the file's default) from its layers: defaults <
    tpuctl.toml < TPUCTL_<SETTING> < `flags` (the command line's settings)."""
    environ = os.environ if environ is None else environ
    path = project_path(config_path, environ, cwd)
    data = read_project_file(path) if path else {}
    alias = _select_alias(alias or environ.get("TPUCTL_TARGET"), data, path)
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if path and alias in data.get("targets", {}):
        layers.append((f"{path.name} [targets.{alias}]", data["targets"][alias]))
    env_values = {key: environ[env_name(key)] for key in FIELD_KINDS if env_name(key) in environ}
    layers.append(("environment", env_values))
    layers.append(("flag", flags or {}))
    values: dict[str, Any] = {}
    sources = {key: "default" for key in FIELD_KINDS}
    for origin, layer in layers:
        for key, raw in layer.items():
            label = f"{env_name(key)} (environment)" if origin == "environment" else origin
            values[key] = coerce(key, raw, label)
            sources[key] = label
    return Target(alias=alias, sources=sources, **values)


def project_path(config_path: str | None = None, environ: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> Path | None:
    """The project file in use: --config, else TPUCTL_CONFIG, else tpuctl.toml here or in a parent folder."""
    environ = os.environ if environ is None else environ
    explicit = config_path or environ.get("TPUCTL_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise BadInput(f"config file {explicit!r} does not exist")
        return path
    return find_project_file(cwd or Path.cwd())


def _select_alias(alias: str | None, data: Mapping[str, Any], path: Path | None) -> str:
    targets = data.get("targets", {})
    alias = alias or data.get("default_target")
    if alias is None:
        if len(targets) > 1:
            raise BadInput(f"{path} defines several targets ({', '.join(targets)}); choose one with --target "
                           "or set default_target")
        return next(iter(targets), "default")
    if targets and alias not in targets:
        raise BadInput(f"unknown target {alias!r}: {path} defines {', '.join(targets)}")
    if not targets and alias != "default":
        where = str(path) if path else f"no {PROJECT_FILE} was found"
        raise BadInput(f"unknown target {alias!r}: {where} defines no targets")
    return alias
