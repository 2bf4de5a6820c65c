"""Text + voice prompt -> generated codes (spec §0 step 3 without the decoder): tokenizer, side tables, talker and
code predictor opened together from the converter's manifest section (:func:`...convert.lm_convert.convert_lm`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.errors import BundleError, InputError

from .code_predictor import CodePredictor
from .generate import GenerationConfig, Trace, generate_codes
from .lm_tables import LMTables
from .prefill import TalkerPrompt, build_talker_prompt
from .talker import Talker
from .text_tokens import TextTokens


class Qwen3LM:
    """Owns one talker and one code predictor context (freed by :meth:`close`).

    ``section``: the dict ``convert_lm`` returned (``files``, ``talker_gguf``, ``code_predictor_gguf``, ``ids``,
    ``sampling``, ``default_quant``); file names are relative to ``root``. ``n_ctx`` bounds prefill + frames.
    """

    def __init__(self, root: str | os.PathLike, section: Mapping[str, Any], *, quant: str | None = None,
                 n_ctx: int = 4096, n_threads: int | None = None, exact: bool = False, kv_type: str = "f16") -> None:
        root = Path(root)
        q = quant or section["default_quant"]
        if q not in section["talker_gguf"] or q not in section["code_predictor_gguf"]:
            raise BundleError(f"{root} has no {q} talker / code predictor; it has {', '.join(section['talker_gguf'])}")
        self.ids = dict(section["ids"])
        self.sampling = dict(section["sampling"])
        self.tables = LMTables(root, section["files"], self.ids)
        self.tokens = TextTokens(root / section["files"]["tokenizer"])
        self.quant = q
        self.talker = Talker(root / section["talker_gguf"][q], self.tables, n_ctx=n_ctx, n_threads=n_threads,
                             exact=exact, kv_type=kv_type)
        try:
            self.cp = CodePredictor(root / section["code_predictor_gguf"][q], self.tables, n_threads=n_threads,
                                    exact=exact, kv_type=kv_type)
        except Exception:
            self.talker.close()
            raise

    def prompt(self, text: str, spk_embedding: np.ndarray, *, language: str | None = None,
               ref_text: str | None = None, ref_codes: np.ndarray | None = None,
               non_streaming: bool = False) -> TalkerPrompt:
        """The talker prompt: ICL when ``ref_text`` and ``ref_codes`` are given, x-vector only otherwise."""
        if (ref_text is None) != (ref_codes is None):
            raise InputError("ICL voice cloning needs both the prompt transcript and the prompt codes")
        ref_ids = self.tokens.ref_ids(ref_text) if ref_text is not None else None
        return build_talker_prompt(self.tables, self.ids, self.tokens.target_ids(text), spk_embedding,
                                   language=language, ref_ids=ref_ids, ref_codes=ref_codes,
                                   non_streaming=non_streaming)

    def generate(self, prompt: TalkerPrompt, *, rng: np.random.Generator | None = None,
                 progress: Callable[[int], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 trace: Trace | None = None, on_frame: Callable[[np.ndarray], None] | None = None,
                 **overrides: Any) -> np.ndarray:
        """(n, 16) int64 codes. ``overrides``: generation_config keys (``do_sample``, ``max_new_tokens``,
        ``subtalker_top_k``, ...) over the checkpoint's defaults."""
        cfg = GenerationConfig.from_sampling(self.sampling, **overrides)
        return generate_codes(self.talker, self.cp, prompt, int(self.ids["codec_eos_token_id"]), cfg, rng=rng,
                              progress=progress, should_stop=should_stop, trace=trace, on_frame=on_frame)

    def close(self) -> None:
        self.talker.close()
        self.cp.close()

    def __enter__(self) -> Qwen3LM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
