"""Which XLA operations a phase of the peer workload spends its time in, from the JAX profiler: the
built-in sampler's rollout, this trainer's update, or a sglang-jax rollout. Prints the top source
operations (the JAX op each compiled operation came from) with their share of the device time.

    .venv/bin/python bench/peers/op_profile.py rollout|update|sglang [--top 15] [--engine 'k=v,...']

The optimized HLO of every jitted function is dumped to a temporary folder (XLA_FLAGS, set here before
JAX starts) so that each operation in the trace can be named by the op_name metadata XLA keeps.
"""

from __future__ import annotations

import os
import tempfile

DUMP = tempfile.mkdtemp(prefix="bench-hlo-")
if __name__ == "__main__":  # before anything imports jax
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={DUMP} --xla_dump_hlo_as_text"

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import workload  # noqa: E402
from run import prepare  # noqa: E402
from sglang_profile import backends  # noqa: E402

from trainer.data import left_pad  # noqa: E402
from trainer.rollout.sampling import SamplingSettings  # noqa: E402

_OP = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"')


def op_names() -> dict[str, dict[str, str]]:
    """module name -> HLO instruction -> the JAX op it came from, from the dumped optimized HLO."""
    names: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for path in glob.glob(f"{DUMP}/*after_optimizations.txt"):
        module = re.search(r"module_\d+\.(.*?)\.cpu_after", path).group(1)
        for line in open(path):
            match = _OP.match(line)
            if match:
                names[module][match.group(1)] = match.group(2)
    return names


def source(op_name: str) -> str:
    """A short source name: the model path and op, without jit wrappers and scan plumbing."""
    short = re.sub(r"jit\([^)]*\)/", "", op_name)
    short = short.replace("transpose(jvp(Qwen2ForCausalLM))", "backward").replace("jvp(Qwen2ForCausalLM)", "forward")
    return re.sub(r"(/while/body)?(/closed_call)?/layers/layer", "/layer", short)


def top_ops(trace_dir: str, top: int) -> dict:
    trace = glob.glob(f"{trace_dir}/plugins/profile/*/perfetto_trace.json.gz")[0]
    events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    names, by_source, by_module = op_names(), collections.Counter(), collections.Counter()
    for event in events:
        args = event.get("args", {})
        if event.get("ph") != "X" or "hlo_op" not in args or event["name"].startswith(("while", "conditional", "call")):
            continue
        module = args["hlo_module"]
        by_module[module] += event["dur"]
        by_source[source(names.get(module, {}).get(args["hlo_op"], args["hlo_op"]))] += event["dur"]
    total = sum(by_module.values())
    return {"device_ms": total / 1e3,
            "modules": {m: round(v / total, 3) for m, v in by_module.most_common(5)},
            "top_ops": [{"op": s, "share": round(v / total, 3), "ms": round(v / 1e3, 1)}
                        for s, v in by_source.most_common(top)]}


def update_call(gsm8k_dir: Path):
    """One call of this trainer's jitted train step on the workload's batch (the state moves on each call)."""
    from experiments import setup

    loop, _, _, batch = setup(gsm8k_dir)

    def once():
        loop.state, metrics = loop.train_step(loop.state, batch)
        jax.block_until_ready(metrics)

    return once, {}


def rollout_call(gsm8k_dir: Path, engine: str | None):
    """One generate of the workload's batch: the built-in sampler (engine None) or a sglang-jax engine."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    prepare(workdir, gsm8k_dir, workload.STEPS)
    made, tokenizer = backends(workdir, [] if engine is None else [engine])
    backend = made["built-in jax sampler" if engine is None else engine or "trainer defaults"][0]
    prompts = workload.read_prompts(workdir)[:workload.PROMPTS_PER_STEP]
    ids, mask = left_pad([p["ids"] for p in prompts for _ in range(workload.GROUP)], workload.PROMPT_LEN,
                         tokenizer.pad_id)
    settings = SamplingSettings(workload.NEW_TOKENS, workload.TEMPERATURE, ignore_eos=True)
    return (lambda: backend.generate(ids, mask, settings, seed=1)), made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["rollout", "update", "sglang"])
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--engine", default="", help="rollout.sglang settings for `sglang`, e.g. 'page_size=16'")
    parser.add_argument("--gsm8k-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "tests" / "trainer" / "data" / "gsm8k")
    args = parser.parse_args()
    if args.what == "update":
        once, made = update_call(args.gsm8k_dir)
    else:
        once, made = rollout_call(args.gsm8k_dir, args.engine if args.what == "sglang" else None)
    once()  # compile
    once()
    trace_dir = tempfile.mkdtemp(prefix="bench-trace-")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        once()
    for backend, _ in made.values():
        backend.shutdown()
    result = top_ops(trace_dir, args.top)
    for row in result["top_ops"]:
        print(f"{100 * row['share']:5.1f}%  {row['ms']:8.1f} ms  {row['op'][:110]}")
    print(json.dumps({"bench": "op_profile", "what": args.what, "engine": args.engine, **result}))


if __name__ == "__main__":
    main()
