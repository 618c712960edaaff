"""One tunix run of the workload (google-tunix 0.1.7, jax 0.12 CPU), through GRPOLearner / RLCluster with the
vanilla rollout and tunix's own Qwen2 loaded from the workload's safetensors.

    .bench-envs/tunix/bin/python bench/peers/run_tunix.py --workdir DIR --run N --out FILE

Timing wraps three of tunix's own methods without changing them: a global step
(`RLLearner._run_global_step`, which waits for its rollout and update), the rollout
(`GRPOLearner._generate_and_compute_advantage`: generation, decoding, reward, advantages) and the
update (`RLCluster.update_actor`), each ending with the device idle (block_until_ready on the
actor's parameters).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
import optax
import workload
from flax import nnx
from transformers import AutoTokenizer
from tunix.models.qwen2 import model as qwen2_model
from tunix.models.qwen2 import params as qwen2_params
from tunix.rl import rl_cluster as rl_cluster_lib
from tunix.rl.grpo.grpo_learner import GRPOConfig, GRPOLearner
from tunix.rl.rollout import base_rollout


def reward(prompts, completions, **kwargs) -> list[float]:
    return [workload.length_reward(c) for c in completions]


def load_model(model_dir: str, mesh):
    m = workload.MODEL
    config = qwen2_model.ModelConfig(
        num_layers=m["num_layers"], vocab_size=m["vocab_size"], embed_dim=m["hidden_size"],
        hidden_dim=m["intermediate_size"], num_heads=m["num_heads"], head_dim=m["head_dim"],
        num_kv_heads=m["num_kv_heads"], rope_theta=10000, norm_eps=1e-6, use_tied_embedding=True)
    return qwen2_params.create_model_from_safe_tensors(model_dir, config, mesh)


def cluster(model, tokenizer, mesh, steps: int) -> rl_cluster_lib.RLCluster:
    optimizer = optax.adamw(workload.LEARNING_RATE, b1=workload.ADAM_B1, b2=workload.ADAM_B2, eps=workload.ADAM_EPS,
                            weight_decay=0.0)
    role = rl_cluster_lib.Role
    config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={role.ACTOR: mesh, role.REFERENCE: mesh, role.ROLLOUT: mesh},
        rollout_engine="vanilla", offload_to_cpu=False,
        training_config=rl_cluster_lib.RLTrainingConfig(actor_optimizer=optimizer, eval_every_n_steps=10**9,
                                                        max_steps=steps),
        rollout_config=base_rollout.RolloutConfig(
            max_tokens_to_generate=workload.NEW_TOKENS, max_prompt_length=workload.PROMPT_LEN,
            kv_cache_size=workload.PROMPT_LEN + workload.NEW_TOKENS, temperature=workload.TEMPERATURE,
            top_p=1.0, top_k=None,
            # An id outside the vocabulary: no sampled token ends a completion (tunix has no min_new_tokens).
            eos_tokens=[workload.MODEL["vocab_size"]]))
    return rl_cluster_lib.RLCluster(actor=model, reference=None, tokenizer=tokenizer, cluster_config=config)


def timed(owner, name: str, times: list, done=lambda result: None):
    """Replace owner.name by a wrapper that appends its wall time (after `done(result)`) to times."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        done(result)
        times.append(time.perf_counter() - start)
        return result

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--run", type=int, default=1)
    parser.add_argument("--steps", type=int, default=workload.STEPS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model_dir = str(args.workdir / "model")
    # jax 0.12's make_mesh defaults to Explicit axes, which tunix's embedding gather rejects.
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    model = load_model(model_dir, mesh)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rl_cluster = cluster(model, tokenizer, mesh, args.steps)
    learner = GRPOLearner(rl_cluster=rl_cluster, reward_fns=[reward],
                          algo_config=GRPOConfig(num_generations=workload.GROUP, num_iterations=1, beta=0.0,
                                                 epsilon=0.2, loss_agg_mode="sequence-mean-token-mean"))
    actor = rl_cluster.actor_trainer.model
    before = jax.tree.map(np.array, nnx.state(actor, nnx.Param))

    def actor_idle(_):
        jax.block_until_ready(nnx.state(actor, nnx.Param))

    step_s, rollout_s, update_s, outputs = [], [], [], []
    timed(learner, "_run_global_step", step_s, actor_idle)
    timed(learner, "_generate_and_compute_advantage", rollout_s, lambda ex: jax.block_until_ready(ex.advantages))
    timed(rl_cluster, "update_actor", update_s, actor_idle)
    timed(rl_cluster, "generate", [], outputs.append)

    prompts = workload.read_prompts(args.workdir)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p["question"]}], add_generation_prompt=True,
                                           tokenize=False) for p in prompts]
    per = workload.PROMPTS_PER_STEP
    # tunix batches are dicts of arrays: it repeats every leaf num_generations times along axis 0.
    batches = [{"prompts": np.array(texts[i:i + per]), "answer": np.array([p["answer"] for p in prompts[i:i + per]])}
               for i in range(0, per * args.steps, per)]
    learner.train(batches)

    for out, i in zip(outputs, range(0, per * args.steps, per), strict=True):
        expected = [p["ids"] for p in prompts[i:i + per] for _ in range(workload.GROUP)]
        got = [row[row != tokenizer.pad_token_id].tolist() for row in np.asarray(out.left_padded_prompt_tokens)]
        if got != expected or np.asarray(out.left_padded_prompt_tokens).shape[1] != workload.PROMPT_LEN:
            raise SystemExit("tunix: the rollout's prompt tokens differ from the harness's")
    after = jax.tree.map(np.array, nnx.state(actor, nnx.Param))
    pairs = list(zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
    changed = sum(int((a != b).sum()) for b, a in pairs)
    rec = workload.record(
        "tunix", args.run,
        [{"step_s": s, "rollout_s": r, "update_s": u} for s, r, u in zip(step_s, rollout_s, update_s, strict=True)],
        [len(tokens) for out in outputs for tokens in out.tokens], changed / sum(b.size for b, _ in pairs),
        sum(bool((a != b).any()) for b, a in pairs), len(pairs), steps=args.steps)
    args.out.write_text(json.dumps(rec))


if __name__ == "__main__":
    main()
