"""tpuctl: the TPU VM training SOP (sync, secrets, verify-env, launch, tail, status, stop, smoke) as one CLI."""

__version__ = "0.1.0"
