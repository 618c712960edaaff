"""A conda stand-in for simulated workers: the SOP's VM activates a conda env (`mllm-jax`).

No real conda can be installed here, so each worker's home gets `miniconda3/etc/profile.d/conda.sh`
(tpuctl/sim/conda.sh: a `conda` shell function, as the real file defines) and
`miniconda3/envs/NAME`, a link to an existing virtual environment. tpuctl finds it exactly as on a
VM: `conda info --base`, else `~/miniconda3`, then `conda activate NAME`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

CONDA_SH = Path(__file__).with_name("conda.sh")


def install_conda(home: Path, envs: Mapping[str, Path]) -> Path:
    """Install the stand-in under `home`/miniconda3 with `envs` (name -> venv prefix); returns the base."""
    base = home / "miniconda3"
    (base / "etc" / "profile.d").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CONDA_SH, base / "etc" / "profile.d" / "conda.sh")
    (base / "envs").mkdir(exist_ok=True)
    for name, prefix in envs.items():
        link = base / "envs" / name
        if link.is_symlink():
            link.unlink()
        link.symlink_to(Path(prefix).resolve())
    return base
