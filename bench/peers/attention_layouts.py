"""Grouped-query attention spelled three ways, on the peer workload's shapes, in one run: a decode step's
attention (16 rows, one query against a 192-position cache) and a training forward and backward (4 rows,
192 positions), each four layers deep. Prints one line per case and one JSON object.

    .venv/bin/python bench/peers/attention_layouts.py [--rounds 5]

- `grouped`: the group and the positions as separate axes, "btkgd,bksd->bkgts" then "bkgts,bksd->btkgd"
  (the trainer's attention before issue 12's second pass);
- `rows`: the trainer's `attention`: a KV head's queries as the rows of one matrix, keys after positions
  (what scanned layers, a TPU's, use);
- `rows_keys_transposed`: the same with the keys stored [batch, kv heads, head_dim, positions] (what
  unrolled layers, the CPU's, use).
Figures are this process's CPU seconds, the fastest of --rounds rounds run round-robin (fast_paths.py says
why); every spelling is first checked to compute the same numbers as `grouped`.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import workload
from fast_paths import fastest

from trainer.model.qwen2 import attention

KV_HEADS, HEAD_DIM = workload.MODEL["num_kv_heads"], workload.MODEL["head_dim"]
HEADS = workload.MODEL["num_heads"]
LAYERS = workload.MODEL["num_layers"]
POSITIONS = workload.PROMPT_LEN + workload.NEW_TOKENS


def grouped(q_BxTxNxD, k_BxKxSxD, v_BxKxSxD, mask_BxTxS):
    b, t, n, d = q_BxTxNxD.shape
    q = q_BxTxNxD.reshape(b, t, KV_HEADS, n // KV_HEADS, d)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k_BxKxSxD) * d ** -0.5
    probs = jax.nn.softmax(jnp.where(mask_BxTxS[:, None, None], scores, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.einsum("bkgts,bksd->btkgd", probs, v_BxKxSxD).reshape(b, t, n * d)


SPELLINGS = {
    "grouped": (grouped, False),
    "rows": (attention, False),
    "rows_keys_transposed": (lambda q, k, v, m: attention(q, k, v, m, keys_transposed=True), True),
}


def inputs(rows: int, queries: int):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((rows, queries, HEADS, HEAD_DIM)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((rows, KV_HEADS, POSITIONS, HEAD_DIM)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((rows, KV_HEADS, POSITIONS, HEAD_DIM)), jnp.float32)
    causal = jnp.arange(POSITIONS)[None, :] <= (POSITIONS - queries + jnp.arange(queries))[:, None]
    return q, k, v, jnp.broadcast_to(causal, (rows, queries, POSITIONS))


def decode_step(spelling, keys_transposed: bool):
    """64 decode steps of LAYERS layers' attention against one cache, each step's query fed by the last output."""
    def run(q, k, v, mask):
        k = jnp.swapaxes(k, 2, 3) if keys_transposed else k

        def body(_, out):
            for _ in range(LAYERS):
                out = spelling(q + 1e-3 * out.reshape(q.shape), k, v, mask)
            return out

        return jax.lax.fori_loop(0, workload.NEW_TOKENS, body, jnp.zeros((q.shape[0], 1, HEADS * HEAD_DIM)))

    return jax.jit(run)


def train_pass(spelling, keys_transposed: bool):
    """Forward and backward of LAYERS layers' attention over whole rows."""
    def loss(q, k, v, mask):
        k = jnp.swapaxes(k, 2, 3) if keys_transposed else k
        out = q.reshape(q.shape[0], q.shape[1], -1)
        for _ in range(LAYERS):
            out = out + spelling(out.reshape(q.shape), k, v, mask)
        return jnp.sum(out * out)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cases = {"decode": (decode_step, inputs(workload.PROMPTS_PER_STEP * workload.GROUP, 1)),
             "train": (train_pass, inputs(4, POSITIONS))}
    calls = {}
    for case, (make, operands) in cases.items():
        want = None
        for name, (spelling, keys_transposed) in SPELLINGS.items():
            fn = make(spelling, keys_transposed)
            got = jax.tree.leaves(fn(*operands))
            want = got if want is None else want
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
            calls[(case, name)] = lambda fn=fn, a=operands: jax.block_until_ready(fn(*a))
    best = fastest(calls, args.rounds)
    result = {"bench": "attention_layouts", "rounds": args.rounds, "cpu_s": {}, "x_grouped": {}}
    for (case, name), seconds in best.items():
        ratio = seconds / best[(case, "grouped")]
        print(f"{case:7s} {name:22s} {seconds:.4f} s  {ratio:.2f}x grouped")
        result["cpu_s"][f"{case}/{name}"] = round(seconds, 4)
        result["x_grouped"][f"{case}/{name}"] = round(ratio, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
