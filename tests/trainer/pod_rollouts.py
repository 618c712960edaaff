"""One process of a simulated pod: the trainer with its real backend, writing every rollout's completion
token ids to OUT_DIR/rollouts-<process index>.json. Arguments: the trainer's `--set KEY=VALUE` pairs."""

import json
import sys
from pathlib import Path

from trainer.config import load_config
from trainer.loop import train
from trainer.rollout import make_backend
from trainer.runtime import start


def main(argv: list[str]) -> None:
    config = load_config(None, sets=[value for flag, value in zip(argv[::2], argv[1::2], strict=True) if flag == "--set"])
    runtime = start(config)
    rollouts = []

    def recording_backend(*args):
        backend = make_backend(*args)
        real_generate = backend.generate

        def generate(*generate_args, **kwargs):
            out = real_generate(*generate_args, **kwargs)
            rollouts.append([row[mask.astype(bool)].tolist()
                             for row, mask in zip(out.completion_ids_NxC, out.completion_mask_NxC, strict=True)])
            return out

        backend.generate = generate
        return backend

    train(config, runtime, recording_backend)
    path = Path(config.out_dir) / f"rollouts-{runtime.process_index}.json"
    path.write_text(json.dumps(rollouts))


if __name__ == "__main__":
    main(sys.argv[1:])
