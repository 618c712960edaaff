"""Cloud TPU VMs through the google-cloud-tpu API: lifecycle, worker discovery, pinned host keys.

Imported only by commands that need it, never at start-up: `tpuctl --help` loads no google module.
"""
