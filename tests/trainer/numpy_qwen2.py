"""An independent Qwen2 forward in plain NumPy (float64), following the Hugging Face modelling code.

Written separately from trainer/model: it reads the safetensors files itself, keeps Hugging Face's
[out, in] layout, repeats KV heads explicitly, and handles one unpadded sequence at a time.
"""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


class NumpyQwen2:
    def __init__(self, model_dir: Path):
        self.cfg = json.loads((Path(model_dir) / "config.json").read_text())
        self.w = {}
        for file in sorted(Path(model_dir).glob("*.safetensors")):
            self.w |= {k: v.astype(np.float64) for k, v in load_file(str(file)).items()}

    def _rms(self, x, weight):
        return weight * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.cfg["rms_norm_eps"])

    def _rope(self, x_HxTxD, positions):
        d = x_HxTxD.shape[-1]
        inv_freq = 1.0 / (self.cfg["rope_theta"] ** (np.arange(0, d, 2) / d))
        freqs = np.outer(positions, inv_freq)
        emb = np.concatenate([freqs, freqs], axis=-1)
        rotated = np.concatenate([-x_HxTxD[..., d // 2:], x_HxTxD[..., : d // 2]], axis=-1)
        return x_HxTxD * np.cos(emb) + rotated * np.sin(emb)

    def _attention(self, x, i, positions):
        c, w, p = self.cfg, self.w, f"model.layers.{i}.self_attn."
        heads, kv_heads, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        t = x.shape[0]
        q = (x @ w[p + "q_proj.weight"].T + w[p + "q_proj.bias"]).reshape(t, heads, d).transpose(1, 0, 2)
        k = (x @ w[p + "k_proj.weight"].T + w[p + "k_proj.bias"]).reshape(t, kv_heads, d).transpose(1, 0, 2)
        v = (x @ w[p + "v_proj.weight"].T + w[p + "v_proj.bias"]).reshape(t, kv_heads, d).transpose(1, 0, 2)
        q, k = self._rope(q, positions), self._rope(k, positions)
        k = np.repeat(k, heads // kv_heads, axis=0)
        v = np.repeat(v, heads // kv_heads, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = (probs @ v).transpose(1, 0, 2).reshape(t, heads * d)
        return out @ w[p + "o_proj.weight"].T

    def logits(self, token_ids) -> np.ndarray:
        w = self.w
        x = w["model.embed_tokens.weight"][np.asarray(token_ids)]
        positions = np.arange(len(token_ids))
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = x + self._attention(self._rms(x, w[p + "input_layernorm.weight"]), i, positions)
            h = self._rms(x, w[p + "post_attention_layernorm.weight"])
            gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
        x = self._rms(x, w["model.norm.weight"])
        head = w["model.embed_tokens.weight"] if self.cfg["tie_word_embeddings"] else w["lm_head.weight"]
        return x @ head.T
