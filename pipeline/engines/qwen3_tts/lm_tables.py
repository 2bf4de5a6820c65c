"""The numpy side tables of the talker and code predictor (spec §2.2, §5 definitions, §7), memory-mapped.

P(id) = ``text_proj[id]`` (precomputed text_projection(text_embedding[id]), float16 or float32 on disk),
C(id) = ``talker_codec_embedding[id]``, F(frame) = C(c0) + sum_i ``cp_codec_embedding[i-1][c_i]``; the heads
``talker_codec_head`` and ``cp_lm_head[j]`` turn final-normed hidden states into logits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.shared.errors import BundleError, InputError


def _load(root: Path, name: str, ndim: int, mmap: bool = True) -> np.ndarray:
    path = root / name
    try:
        a = np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as e:
        raise BundleError(f"{path} is missing or unreadable ({e}); convert the bundle again") from e
    if a.ndim != ndim or a.dtype not in (np.float32, np.float16):
        raise BundleError(f"{path}: expected a {ndim}-D float array, got {a.dtype} {a.shape}")
    return a


class LMTables:
    """Side tables named by ``files`` (the converter's ``files`` section) under ``root``."""

    def __init__(self, root: str | os.PathLike, files: Mapping[str, str], ids: Mapping) -> None:
        root = Path(root)
        self.text_proj = _load(root, files["text_proj"], 2)
        special = np.asarray(_load(root, files["tts_text_rows"], 2, mmap=False), dtype=np.float32)
        self.codec_embedding = np.asarray(_load(root, files["talker_codec_embedding"], 2, False), np.float32)
        self.codec_head = np.asarray(_load(root, files["talker_codec_head"], 2, False), np.float32)
        self.cp_embedding = _load(root, files["cp_codec_embedding"], 3)
        self.cp_head = _load(root, files["cp_lm_head"], 3)
        self.hidden = int(self.codec_embedding.shape[1])
        self.codec_vocab = int(self.codec_embedding.shape[0])
        self.cp_vocab = int(self.cp_head.shape[1])
        self.n_groups = int(self.cp_embedding.shape[0]) + 1
        self.mtp_weight = self.mtp_bias = None
        if files.get("cp_mtp_proj_weight"):
            self.mtp_weight = np.asarray(_load(root, files["cp_mtp_proj_weight"], 2, False), np.float32)
            self.mtp_bias = np.asarray(_load(root, files["cp_mtp_proj_bias"], 1, False), np.float32)
        if (special.shape != (3, self.hidden) or self.text_proj.shape[1] != self.hidden
                or self.cp_embedding.shape[1:] != (self.cp_vocab, self.hidden)
                or self.codec_head.shape != self.codec_embedding.shape):
            raise BundleError(f"{root}: the talker side tables do not agree on hidden size {self.hidden}")
        self.tts_pad, self.tts_bos, self.tts_eod = (special[i].copy() for i in range(3))
        self.pad_id, self.bos_id, self.eod_id = (int(ids[k]) for k in
                                                 ("tts_pad_token_id", "tts_bos_token_id", "tts_eos_token_id"))

    def proj(self, ids: Sequence[int]) -> np.ndarray:
        """P(id) rows (n, H) float32; the tts special rows come from the exact float32 copy."""
        a = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = a[(a < 0) | (a >= self.text_proj.shape[0])]
        if bad.size:
            raise InputError(f"text token id {int(bad[0])} is outside the text vocabulary "
                             f"0..{self.text_proj.shape[0] - 1} (tokenizer and bundle do not match?)")
        out = np.array(self.text_proj[a], dtype=np.float32)
        for tid, row in ((self.pad_id, self.tts_pad), (self.bos_id, self.tts_bos), (self.eod_id, self.tts_eod)):
            out[a == tid] = row
        return out

    def codec(self, ids: Sequence[int]) -> np.ndarray:
        """C(id) rows (n, H)."""
        a = np.asarray(ids, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= self.codec_vocab):
            raise InputError(f"codec id outside 0..{self.codec_vocab - 1}")
        return self.codec_embedding[a]

    def frame_rows(self, codes: np.ndarray) -> np.ndarray:
        """F(frame) for (T, 16) codes -> (T, H): code 0 through the talker's table, code i through the code
        predictor's table i-1 (spec §14 item 2)."""
        c = np.asarray(codes, dtype=np.int64)
        if c.ndim != 2 or c.shape[1] != self.n_groups:
            raise InputError(f"codes must be (T, {self.n_groups}), got {c.shape}")
        if c.size and (c.min() < 0 or c[:, 1:].max(initial=0) >= self.cp_vocab or c[:, 0].max() >= self.codec_vocab):
            raise InputError(f"codes must be in 0..{self.cp_vocab - 1}")
        out = self.codec_embedding[c[:, 0]].astype(np.float32)
        for i in range(1, self.n_groups):
            out += self.cp_embedding[i - 1][c[:, i]]
        return out

    def cp_project(self, rows: np.ndarray) -> np.ndarray:
        """small_to_mtp_projection (Identity when the code predictor is as wide as the talker)."""
        r = np.asarray(rows, dtype=np.float32)
        return r if self.mtp_weight is None else r @ self.mtp_weight.T + self.mtp_bias
