"""The Cloud TPU API client: credentials, endpoint, retries, and one clear line per API error.

Credentials are Application Default Credentials. `tpu_api_endpoint` (TPUCTL_TPU_API_ENDPOINT) points
the client elsewhere; a plain-HTTP endpoint is a local emulator and gets anonymous credentials, so
real credentials never travel unencrypted. 429 and 503 answers are retried with backoff (the
server's RetryInfo delay when it sends one); every other error is raised at once as a TpuctlError.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import tpu_v2
from google.protobuf import field_mask_pb2

from tpuctl.config import Target
from tpuctl.console import BadInput, TpuctlError
from tpuctl.retry import backoff_s, retrying

T = TypeVar("T")
API_ATTEMPTS = 5
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 20.0
CALL_TIMEOUT_S = 60.0
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
LOGIN_HINT = "run `gcloud auth application-default login`"
RETRYABLE = (gexc.TooManyRequests, gexc.ServiceUnavailable)
_REST_PREFIX = re.compile(r"^(GET|POST|PATCH|PUT|DELETE) \S+: ")


def require(target: Target, key: str, what: str) -> str:
    value = getattr(target, key)
    if not value:
        raise BadInput(f"{key}: not set; expected {what} (--{'tpu' if key == 'name' else key}, "
                       f"TPUCTL_{key.upper()} or {key} in tpuctl.toml)")
    return value


def node_path(project: str, zone: str, name: str) -> str:
    """A node's resource name: how the API names it, and the key its host-key pins are kept under."""
    return f"projects/{project}/locations/{zone}/nodes/{name}"


def connect(target: Target) -> TpuApi:
    """The TPU API for the target's project and zone."""
    project = require(target, "project", "a Google Cloud project ID")
    zone = require(target, "zone", "a zone such as 'us-central2-b'")
    return TpuApi(make_client(target.tpu_api_endpoint), project, zone)


def make_client(endpoint: str) -> tpu_v2.TpuClient:
    plain_http = endpoint.startswith("http://")
    credentials = AnonymousCredentials() if plain_http else default_credentials()
    options = ClientOptions(api_endpoint=endpoint) if endpoint else None
    return tpu_v2.TpuClient(transport="rest", credentials=credentials, client_options=options)


def default_credentials() -> Any:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError:
        configured = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        fix = f" (or fix GOOGLE_APPLICATION_CREDENTIALS={configured})" if configured else ""
        raise TpuctlError(f"no Google Cloud credentials found (Application Default Credentials): {LOGIN_HINT}{fix}"
                          ) from None
    return credentials


class TpuApi:
    """The calls tpuctl makes, each retried and with its errors turned into one line."""

    def __init__(self, client: tpu_v2.TpuClient, project: str, zone: str):
        self.client = client
        self.project = project
        self.zone = zone

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.zone}"

    def node_path(self, name: str) -> str:
        return node_path(self.project, self.zone, name)

    def queued_path(self, name: str) -> str:
        return f"{self.parent}/queuedResources/{name}"

    def label(self, name: str) -> str:
        return f"TPU {name!r} ({self.project}/{self.zone})"

    def call(self, what: str, request: Callable[[], T], missing_ok: bool = False) -> T | None:
        """Run one request: retry 429/503 as the server says, turn every other failure into a TpuctlError.

        With `missing_ok`, a 404 answer is None instead of an error.
        """
        from google.auth.exceptions import GoogleAuthError
        from requests import RequestException

        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            return request()

        try:
            return retrying(attempt, lambda exc: isinstance(exc, RETRYABLE), retry_delay, attempts=API_ATTEMPTS)
        except gexc.NotFound as exc:
            if missing_ok:
                return None
            raise api_error(what, exc, attempts) from None
        except gexc.GoogleAPICallError as exc:
            raise api_error(what, exc, attempts) from None
        except (GoogleAuthError, RequestException) as exc:
            raise _unreachable(what, exc) from None

    # -- reads -----------------------------------------------------------------------------------

    def get_node(self, name: str) -> tpu_v2.Node:
        return self.call(f"get {self.label(name)}",
                         lambda: self.client.get_node(name=self.node_path(name), timeout=CALL_TIMEOUT_S))

    def find_node(self, name: str) -> tpu_v2.Node | None:
        return self.call(f"get {self.label(name)}", missing_ok=True,
                         request=lambda: self.client.get_node(name=self.node_path(name), timeout=CALL_TIMEOUT_S))

    def list_nodes(self) -> list[tpu_v2.Node]:
        return self.call(f"list TPUs in {self.project}/{self.zone}",
                         lambda: list(self.client.list_nodes(parent=self.parent, timeout=CALL_TIMEOUT_S)))

    def guest_attributes(self, name: str) -> list[tpu_v2.GuestAttributes]:
        """One entry per worker, in worker order: host keys (namespace hostkeys) and the instance name."""
        request = tpu_v2.GetGuestAttributesRequest(name=self.node_path(name))
        response = self.call(f"read the guest attributes of {self.label(name)}",
                             lambda: self.client.get_guest_attributes(request=request, timeout=CALL_TIMEOUT_S))
        return list(response.guest_attributes)

    def zones(self) -> list[str]:
        from google.cloud.location import locations_pb2

        request = locations_pb2.ListLocationsRequest(name=f"projects/{self.project}")
        response = self.call(f"list the TPU zones of project {self.project!r}",
                             lambda: self.client.list_locations(request=request, timeout=CALL_TIMEOUT_S))
        return sorted(location.location_id for location in response.locations)

    def accelerator_types(self) -> list[str]:
        found = self.call(f"list the accelerator types of {self.zone}", lambda: list(
            self.client.list_accelerator_types(parent=self.parent, timeout=CALL_TIMEOUT_S)))
        return sorted(item.type_ for item in found)

    def runtime_versions(self) -> list[str]:
        found = self.call(f"list the runtime versions of {self.zone}", lambda: list(
            self.client.list_runtime_versions(parent=self.parent, timeout=CALL_TIMEOUT_S)))
        return sorted(item.version for item in found)

    def find_queued(self, name: str) -> tpu_v2.QueuedResource | None:
        return self.call(f"get queued resource {name!r} ({self.project}/{self.zone})", missing_ok=True,
                         request=lambda: self.client.get_queued_resource(name=self.queued_path(name),
                                                                         timeout=CALL_TIMEOUT_S))

    def list_queued(self) -> list[tpu_v2.QueuedResource]:
        return self.call(f"list queued resources in {self.project}/{self.zone}", lambda: list(
            self.client.list_queued_resources(parent=self.parent, timeout=CALL_TIMEOUT_S)))

    # -- changes: each returns a long-running operation ------------------------------------------

    def create_node(self, name: str, node: tpu_v2.Node) -> Any:
        return self.call(f"create {self.label(name)}", lambda: self.client.create_node(
            parent=self.parent, node_id=name, node=node, timeout=CALL_TIMEOUT_S))

    def create_queued(self, name: str, resource: tpu_v2.QueuedResource) -> Any:
        return self.call(f"create queued resource {name!r} ({self.project}/{self.zone})", lambda:
                         self.client.create_queued_resource(parent=self.parent, queued_resource_id=name,
                                                            queued_resource=resource, timeout=CALL_TIMEOUT_S))

    def delete_node(self, name: str) -> Any:
        return self.call(f"delete {self.label(name)}",
                         lambda: self.client.delete_node(name=self.node_path(name), timeout=CALL_TIMEOUT_S))

    def delete_queued(self, name: str) -> Any:
        """Delete a queued resource and, with it, the node it created."""
        request = tpu_v2.DeleteQueuedResourceRequest(name=self.queued_path(name), force=True)
        return self.call(f"delete queued resource {name!r} ({self.project}/{self.zone})",
                         lambda: self.client.delete_queued_resource(request=request, timeout=CALL_TIMEOUT_S))

    def update_metadata(self, name: str, metadata: dict[str, str]) -> Any:
        node = tpu_v2.Node(name=self.node_path(name), metadata=metadata)
        mask = field_mask_pb2.FieldMask(paths=["metadata"])
        return self.call(f"update the metadata of {self.label(name)}",
                         lambda: self.client.update_node(node=node, update_mask=mask, timeout=CALL_TIMEOUT_S))

    def operation_done(self, operation: Any, what: str) -> bool:
        """Refresh a long-running operation; raise its error, if it failed, as one line."""
        done = self.call(what, lambda: operation.done(retry=None))
        if done and operation.operation.HasField("error"):
            error = operation.operation.error
            raise TpuctlError(f"{what}: the operation failed (code {error.code}): {_one_line(error.message)}")
        return done


def retry_delay(exc: gexc.GoogleAPICallError, attempt: int) -> float:
    """The server's RetryInfo delay when it sent one, else exponential backoff with jitter."""
    for detail in exc.details or ():
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if delay and delay.endswith("s"):
            try:
                return min(float(delay[:-1]), MAX_BACKOFF_S)
            except ValueError:
                break
    return backoff_s(attempt, FIRST_BACKOFF_S, MAX_BACKOFF_S, jitter=0.2)


def api_error(what: str, exc: gexc.GoogleAPICallError, attempts: int) -> TpuctlError:
    """One line saying what failed, the error class with its HTTP code, the API's message and what to do."""
    code = exc.code  # the HTTP status: tpuctl speaks REST to the API
    message = _one_line(_REST_PREFIX.sub("", exc.message or str(exc)))
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    kinds: list[tuple[type, str, str]] = [
        (gexc.Unauthorized, "not authenticated", f"; {LOGIN_HINT}"),
        (gexc.Forbidden, "permission denied", "; check the project ID, that the Cloud TPU API is enabled there "
                                              "and that your account may use TPUs in it"),
        (gexc.NotFound, "not found", ""),
        (gexc.Conflict, "conflict", "; it already exists or another operation on it is still running"),
        (gexc.TooManyRequests, "quota or rate limit exceeded", "; wait a little, or ask for more quota"),
        (gexc.ServerError, "the TPU API failed", "; try again later"),
        (gexc.BadRequest, "the TPU API refused the request", ""),
    ]
    kind, hint = next(((k, h) for cls, k, h in kinds if isinstance(exc, cls)), ("TPU API error", ""))
    return TpuctlError(f"cannot {what}: {kind} ({code}){tried}: {message}{hint}")


def _unreachable(what: str, exc: Exception) -> TpuctlError:
    """A request that got no API answer: refused credentials, or no connection to the endpoint."""
    from google.auth.exceptions import GoogleAuthError

    if isinstance(exc, GoogleAuthError):
        return TpuctlError(f"cannot {what}: the credentials were refused ({_one_line(str(exc))}): {LOGIN_HINT}")
    return TpuctlError(f"cannot {what}: cannot reach the TPU API ({type(exc).__name__}: {_one_line(str(exc))})")


def _one_line(text: str) -> str:
    return " ".join(text.split())
