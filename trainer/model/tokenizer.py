"""The model folder's tokenizer and chat template, as the trainer uses them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer


class ChatTokenizer:
    """Chat-template prompts in, token ids out; completions back to text; the stop ids."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self._tok = AutoTokenizer.from_pretrained(str(model_dir))
        if not self._tok.chat_template:
            raise ValueError(f"{model_dir}: the tokenizer has no chat template")
        self.stop_ids = _stop_ids(model_dir, self._tok.eos_token_id)
        pad = self._tok.pad_token_id
        self.pad_id = int(pad if pad is not None else self.stop_ids[0])

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def prompt_ids(self, question: str, system_prompt: str) -> list[int]:
        messages = [{"role": "user", "content": question}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        text = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self._tok.encode(text, add_special_tokens=False)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def decode_completions(self, ids_NxC: np.ndarray, mask_NxC: np.ndarray) -> list[str]:
        return [self.decode(row[m.astype(bool)]) for row, m in zip(ids_NxC, mask_NxC, strict=True)]


def _stop_ids(model_dir: Path, tokenizer_eos: int | None) -> list[int]:
    """EOS ids from generation_config.json (Qwen2.5-Instruct lists two) and the tokenizer."""
    ids: list[int] = []
    gen_config = model_dir / "generation_config.json"
    if gen_config.exists():
        eos = json.loads(gen_config.read_text()).get("eos_token_id")
        ids.extend(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer_eos is not None:
        ids.append(tokenizer_eos)
    if not ids:
        raise ValueError(f"{model_dir}: no eos_token_id in generation_config.json or the tokenizer")
    return list(dict.fromkeys(int(i) for i in ids))
