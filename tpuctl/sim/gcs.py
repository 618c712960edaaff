"""A local Google Cloud Storage emulator that orbax writes `gs://` checkpoints to, as to a real bucket.

`gcp-storage-emulator` (pure Python, on PyPI) answers the GCS JSON API on 127.0.0.1. The trainer's
checkpoint path reaches GCS through three clients: etils.epath -> gcsfs (folders, metadata, deletes),
tensorstore's gcs kvstore (the array data) and google-cloud-storage (orbax's pruning). Each has its
own endpoint override, all set by `emulator_env`; with them a process connects to nothing but the
emulator and needs no credentials. A trainer started elsewhere (on a simulated worker) gets the same
variables in its environment.

Limits of the emulator: it ignores preconditions (ifGenerationMatch), which single-writer checkpoints
never rely on, and serves one request at a time. It also leaves out the `x-goog-generation` header of
a download, which GCS always sends: tensorstore then holds an empty generation for what it read, and
its next conditional write of that object (an OCDBT manifest) fails with "Malformed StorageGeneration"
whenever its cache had to re-read the manifest (one save in a few). `start` adds the header.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_BUCKET = "test-bucket"


def emulator_env(url: str) -> dict[str, str]:
    """The variables that point every GCS client of a process at the emulator at `url`."""
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore's gcs driver, read at each kvstore open
        "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: no google.auth metadata-server probe
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else gcsfs makes gRPC TLS calls that hang ~60 s each
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",  # tensorstore: a fixed token, no GCE probe
    }


def _send_generation_headers() -> None:
    """Make the emulator's downloads carry x-goog-generation / x-goog-metageneration, as GCS's do."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    plain = objects.download
    if getattr(plain, "sends_generation", False):
        return

    def download(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            found = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(found["generation"])
            response["x-goog-metageneration"] = str(found["metageneration"])
        except NotFound:
            pass
        return plain(request, response, storage, *args, **kwargs)

    download.sends_generation = True  # type: ignore[attr-defined]
    objects.download = download  # what objects.get calls for ?alt=media
    for _pattern, methods in server.HANDLERS:
        for method, handler in methods.items():
            if handler is plain:
                methods[method] = download


def point_this_process_at(url: str) -> None:
    """Point this process's GCS clients at the emulator, also when fsspec or gcsfs were imported before
    (they cache their configuration and filesystem at import)."""
    os.environ.update(emulator_env(url))
    import fsspec
    import gcsfs.core

    fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"
    fsspec.register_implementation("gcs", gcsfs.core.GCSFileSystem, clobber=True)


class GcsEmulator:
    """`with GcsEmulator() as gcs:` serves an in-memory bucket `gcs.bucket` at `gcs.url` until left."""

    def __init__(self, bucket: str = DEFAULT_BUCKET):
        self.bucket = bucket
        self._server: Any = None

    def start(self) -> GcsEmulator:
        from gcp_storage_emulator.server import create_server

        _send_generation_headers()
        self._server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=self.bucket)
        self._server.start()
        # A client that cancels a racing request leaves a BrokenPipe traceback on stderr: harmless noise.
        self._server._api._httpd.handle_error = lambda request, address: None
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the emulator first"
        return f"http://127.0.0.1:{self._server._api._httpd.server_address[1]}"

    @property
    def env(self) -> dict[str, str]:
        return emulator_env(self.url)

    def wipe(self) -> None:
        """Delete every object, keeping the bucket."""
        self._server.wipe(keep_buckets=True)

    def objects(self, prefix: str = "") -> list[str]:
        """The names of the bucket's objects under `prefix`, read through the JSON API."""
        query = urllib.parse.urlencode({"prefix": prefix})
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}/o?{query}", timeout=30) as answer:
            return sorted(item["name"] for item in json.load(answer).get("items", []))
