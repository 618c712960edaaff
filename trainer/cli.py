"""`trainer`: run GRPO with a preset, a YAML file, `--set` overrides and the upstream environment variables.

Exit codes: 0 done; 2 a configuration error (one line naming key, value and expectation);
143 stopped by SIGTERM after saving a checkpoint; 1 any other failure (one traceback).
"""

from __future__ import annotations

import argparse
import sys

from trainer.config import ConfigError, load_config, to_yaml
from trainer.presets import PRESETS

EXIT_CONFIG_ERROR = 2
EXIT_SIGTERM = 143


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trainer", description="GRPO on GSM8K in JAX (cpu-tiny by default).")
    parser.add_argument("--preset", default="cpu-tiny", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--config", help="YAML file merged over the preset ($VARS expanded)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set rollout.batch_size=4 (value parsed as YAML)")
    parser.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from trainer.runtime import load_env_file

    load_env_file()
    try:
        config = load_config(args.preset, args.config, args.set)
        if args.print_config:
            print(to_yaml(config), end="", flush=True)
            return
        from trainer.loop import Terminated, train
        from trainer.runtime import start

        try:
            train(config, start(config))
        except Terminated:
            sys.exit(EXIT_SIGTERM)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CONFIG_ERROR)
