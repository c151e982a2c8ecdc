"""Triton Python-backend model: ONNX Runtime on CPU, batching every request Triton hands over at once.

Copied verbatim as ``<model>/1/model.py`` (source: ``ops/models/backend/model.py``); it depends only on numpy,
onnxruntime and tokenizers, so the repository is self-contained. What it does follows from the model's config:

- input ``IMAGE`` (uint8 ``[H, W, 3]``): run ``model.onnx`` (normalization is inside the graph); every output of
  the config (``EMBEDDING``, and ``PROBS`` for a model with a classifier) is the graph's output of that name;
- input ``TEXT`` (string), output ``EMBEDDING``: tokenize (``tokenizer/tokenizer.json``), run ``model.onnx``;
- input ``TEXT`` and outputs ``INPUT_IDS``/``ATTENTION_MASK``: tokenize only (the GPU ensemble's first step).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Python backend stub


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.tokenizer: Any = None
        if "TEXT" in self.inputs:
            from tokenizers import Tokenizer

            seq_len = int(params.get("seq_len", "77"))
            tok = Tokenizer.from_file(os.path.join(here, "tokenizer", "tokenizer.json"))
            with open(os.path.join(here, "tokenizer", "tokenizer_config.json")) as f:
                pad_token = json.load(f).get("pad_token") or "<|endoftext|>"
            pad_token = pad_token["content"] if isinstance(pad_token, dict) else pad_token
            tok.enable_truncation(max_length=seq_len)
            tok.enable_padding(length=seq_len, pad_id=tok.token_to_id(pad_token), pad_token=pad_token)
            self.tokenizer = tok
        self.session: Any = None
        if "EMBEDDING" in self.outputs:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
            opts.inter_op_num_threads = 1
            # ORT's idle threads spin by default; beside Triton's own threads on a few cores that spinning
            # steals the CPU the batch needs (ops/bench: Triton/in-process 0.58-0.72 -> 0.63-0.89, EfficientNet)
            opts.add_session_config_entry(
                "session.intra_op.allow_spinning", params.get("allow_spinning", "0")
            )
            path = os.path.join(here, "model.onnx")
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            self.onnx_inputs = [i.name for i in self.session.get_inputs()]
            self.onnx_outputs = [o.name for o in self.session.get_outputs()]

    def _tokenize(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.tokenizer is not None
        strings = [
            t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in texts.reshape(-1)
        ]
        enc = self.tokenizer.encode_batch(strings)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        return ids, mask

    def execute(self, requests: list) -> list:
        name = self.inputs[0]
        arrays = [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        batch = np.concatenate(arrays, axis=0)
        if self.tokenizer is not None:
            ids, mask = self._tokenize(batch)
            if self.session is None:
                outs = {"INPUT_IDS": ids, "ATTENTION_MASK": mask}
            else:
                feed = dict(zip(self.onnx_inputs, (ids, mask), strict=True))
                outs = {"EMBEDDING": self.session.run(None, feed)[0]}
        else:
            arrays = self.session.run(None, {self.onnx_inputs[0]: batch})
            outs = {k: v for k, v in zip(self.onnx_outputs, arrays, strict=True) if k in self.outputs}
        responses = []
        start = 0
        for n in sizes:
            tensors = [
                pb_utils.Tensor(k, np.ascontiguousarray(v[start : start + n])) for k, v in outs.items()
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
