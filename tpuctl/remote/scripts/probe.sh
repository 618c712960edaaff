# --- probe.sh, for verify-env: Python, jax, jaxlib, libtpu and sglang-jax versions and the devices, as
# one JSON line after TPUCTL_PROBE.
# params: venv conda_env
# uses: paths python

activate_python
python3 - <<'TPUCTL_PROBE_EOF'
import json, platform
from importlib import metadata

def version(*dists):
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return None

info = {"python": platform.python_version(), "jax": version("jax"), "jaxlib": version("jaxlib"),
        "libtpu": version("libtpu", "libtpu-nightly"), "sglang-jax": version("sglang-jax")}
try:
    import jax
    info.update(backend=jax.default_backend(), device_count=jax.device_count(),
                local_device_count=jax.local_device_count(), device_kind=jax.devices()[0].device_kind)
except Exception as exc:
    info["error"] = f"{type(exc).__name__}: {exc}"[:400]
print("TPUCTL_PROBE " + json.dumps(info), flush=True)
TPUCTL_PROBE_EOF
