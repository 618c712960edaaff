"""Partition rules: which axis splits which weight, and replication where an axis does not divide."""

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from trainer.sharding import make_mesh, spec_for, tree_shardings


class FakeMesh:
    """Only .shape is read by spec_for; a real 8-device mesh needs 8 devices."""

    shape = {"dp": 1, "fsdp": 4, "tp": 2}


def test_rules_for_stacked_layer_weights_and_embeddings():
    mesh = FakeMesh()
    assert spec_for("layers/layer/q_proj/kernel", (2, 64, 256), mesh) == P(None, "fsdp", "tp")
    assert spec_for("layers/layer/o_proj/kernel", (2, 256, 64), mesh) == P(None, "tp", "fsdp")
    assert spec_for("layers/layer/down_proj/kernel", (2, 128, 64), mesh) == P(None, "tp", "fsdp")
    assert spec_for("layers/layer/k_proj/bias", (2, 128), mesh) == P(None, "tp")
    assert spec_for("embed_tokens/embedding", (512, 64), mesh) == P("tp", "fsdp")
    assert spec_for("lm_head/kernel", (64, 512), mesh) == P("fsdp", "tp")
    assert spec_for("norm/scale", (64,), mesh) == P()
    # Optimizer moments follow their parameter's rule through the longer path.
    assert spec_for("opt_state/1/0/mu/layers/layer/up_proj/kernel", (2, 64, 128), mesh) == P(None, "fsdp", "tp")


def test_an_axis_that_does_not_divide_is_replicated():
    mesh = FakeMesh()
    assert spec_for("embed_tokens/embedding", (151_655, 896), mesh) == P(None, "fsdp")  # odd vocab
    assert spec_for("layers/layer/k_proj/kernel", (2, 6, 128), mesh) == P(None, None, "tp")


def test_tree_shardings_on_the_real_single_device_mesh():
    mesh = make_mesh("1,-1,1")
    tree = {"layers": {"layer": {"q_proj": {"kernel": np.zeros((2, 4, 8))}}}, "step": np.zeros(())}
    shardings = tree_shardings(tree, mesh)
    assert shardings["layers"]["layer"]["q_proj"]["kernel"].spec == P(None, "fsdp", "tp")
    assert shardings["step"].spec == P()
    assert jax.tree.structure(shardings) == jax.tree.structure(tree)
