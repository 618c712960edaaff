"""Where a rollout's time goes inside sglang-jax 0.1.0rc0 on the peer workload (16 rows, 128-token prompt
bucket, 64 new tokens, no stop), and which engine settings come closest to the built-in sampler, all in
one run. Prints a table and one JSON object.

    .venv/bin/python bench/peers/sglang_profile.py [--rounds 3] [--gsm8k-dir DIR] [--engine 'k=v,k=v' ...]

One process holds the built-in sampler and one `rollout.backend=sglang_jax` backend per --engine (rollout.sglang
settings; an empty string is the trainer's auto-sized defaults), and generates the same batch with each,
round-robin in a fresh random order per round; the fastest generate of each is kept, with the engine's
own phases of that call, timed by wrapping (not changing) its scheduler and model runner: prefill
("extend") and decode forwards (each ending with its logits ready), sampling, and the scheduler's own
batch building, result processing and polling. Idle engines poll at 1 kHz (the trainer's idle hook),
a small load that every backend, the built-in sampler included, runs under alike.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import tempfile
import time
from pathlib import Path

import jax
import workload
from run import prepare
from run_trainer import workload_sets

from trainer.auto_values import resolve_auto_values
from trainer.config import load_config
from trainer.data import left_pad
from trainer.model.load import build_model
from trainer.model.tokenizer import ChatTokenizer
from trainer.rollout.jax_sampler import JaxSamplerBackend
from trainer.rollout.sampling import SamplingSettings
from trainer.rollout.sglang_jax import SglangJaxBackend
from trainer.runtime import start
from trainer.sharding import put_tree, tree_shardings

DEFAULT_ENGINES = [
    "",
    "max_running_requests=8",
    "max_running_requests=4",
    "max_running_requests=2",
    "chunked_prefill_size=128",
    "max_running_requests=8,max_total_tokens=1552",
    "max_running_requests=4,max_total_tokens=776",
    "max_running_requests=4,max_total_tokens=776,chunked_prefill_size=128",
    "page_size=64",
    "overlap_schedule=true",
]
SAMPLER = "built-in jax sampler"


class PhaseTimer:
    """Seconds and calls per phase, from wrappers around an engine's scheduler and model runner."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.active = False

    def wrap(self, owner, name: str, phase: str, ready=None) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start_s = time.perf_counter()
            result = original(*args, **kwargs)
            if ready is not None:
                ready(args, result)
            if self.active:
                key = phase(args) if callable(phase) else phase
                self.seconds[key] += time.perf_counter() - start_s
                self.calls[key] += 1
            return result

        setattr(owner, name, timed)

    def instrument(self, backend: SglangJaxBackend) -> None:
        scheduler, runner = backend.engine.scheduler_info["scheduler"], backend.runner
        self.wrap(scheduler, "get_next_batch_to_run", "scheduler: pick batch")
        self.wrap(scheduler, "run_batch", "scheduler: run batch (all below)")
        self.wrap(scheduler, "process_batch_result", "scheduler: process result")
        self.wrap(runner, "_forward", lambda args: "forward: " + ("decode" if args[0].forward_mode.is_decode()
                                                                   else "prefill (extend)"),
                  lambda args, out: jax.block_until_ready(out[0].next_token_logits))
        self.wrap(runner, "sample", "sampling", lambda args, out: jax.block_until_ready(out[0]))

    def take(self) -> dict[str, dict[str, float]]:
        phases = {k: {"s": round(v, 4), "calls": self.calls[k]} for k, v in sorted(self.seconds.items())}
        self.seconds.clear()
        self.calls.clear()
        return phases


def backends(workdir: Path, engines: list[str]):
    model_dir = workdir / "model"
    base = load_config(None, environ={}, sets=workload_sets(workdir, 100, str(workdir / "out")))
    runtime = start(base)
    tokenizer = ChatTokenizer(model_dir)
    model, host = build_model(model_dir, base.model, runtime.platform)
    params = put_tree(host, tree_shardings(host, runtime.mesh))
    sampler = JaxSamplerBackend.create(base, model, runtime, tokenizer, model_dir)  # the platform's defaults
    sampler.push_weights(params)
    made = {SAMPLER: (sampler, None)}
    for engine in engines:
        sets = [f"rollout.sglang.{s}" for s in engine.split(",") if s]
        config = load_config(None, environ={}, sets=workload_sets(workdir, 100, str(workdir / "out"))
                             + ["rollout.backend=sglang_jax"] + sets)
        config = resolve_auto_values(config, runtime, model_dir)
        backend = SglangJaxBackend(config, model.config, runtime, tokenizer, model_dir)
        backend.push_weights(params)
        timer = PhaseTimer()
        timer.instrument(backend)
        made[engine or "trainer defaults"] = (backend, timer)
    return made, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gsm8k-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "tests" / "trainer" / "data" / "gsm8k")
    parser.add_argument("--engine", action="append", help="rollout.sglang settings, e.g. 'page_size=16'")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-sglang-"))
    prepare(workdir, args.gsm8k_dir, workload.STEPS)
    made, tokenizer = backends(workdir, args.engine if args.engine is not None else DEFAULT_ENGINES)
    prompts = workload.read_prompts(workdir)[:workload.PROMPTS_PER_STEP]
    ids, mask = left_pad([p["ids"] for p in prompts for _ in range(workload.GROUP)], workload.PROMPT_LEN,
                         tokenizer.pad_id)
    settings = SamplingSettings(workload.NEW_TOKENS, workload.TEMPERATURE, ignore_eos=True)
    for name, (backend, _) in made.items():  # compile every shape first
        if backend.generate(ids, mask, settings, seed=0).completion_mask_NxC.sum() != ids.shape[0] * workload.NEW_TOKENS:
            raise SystemExit(f"sglang_profile: {name} did not generate {workload.NEW_TOKENS} tokens per row")
    best: dict[str, tuple[float, dict]] = {}
    for r in range(args.rounds):
        order = list(made)
        random.Random(r).shuffle(order)
        for name in order:
            backend, timer = made[name]
            if timer:
                timer.active = True
            start_s = time.perf_counter()
            backend.generate(ids, mask, settings, seed=r + 1)
            seconds = time.perf_counter() - start_s
            phases = timer.take() if timer else {}
            if timer:
                timer.active = False
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, phases)
    for backend, _ in made.values():
        backend.shutdown()
    baseline = best[SAMPLER][0]
    for name, (seconds, phases) in sorted(best.items(), key=lambda item: item[1][0]):
        print(f"{name:70s} {seconds:7.3f} s  {seconds / baseline:5.2f}x the built-in sampler")
        for phase, figures in phases.items():
            print(f"    {phase:36s} {figures['s']:7.3f} s {100 * figures['s'] / seconds:5.1f}%  "
                  f"{figures['calls']:5d} calls  {1e3 * figures['s'] / max(figures['calls'], 1):7.2f} ms/call")
    print(json.dumps({"bench": "sglang_profile", "rounds": args.rounds,
                      "generate_s": {name: s for name, (s, _) in best.items()},
                      "ratio_to_builtin_sampler": {name: s / baseline for name, (s, _) in best.items()},
                      "phases": {name: phases for name, (_, phases) in best.items() if phases}}))


if __name__ == "__main__":
    main()
