"""Talker prefill rows and trailing text rows for Base voice cloning (spec §5.1–5.5, §5.7).

Every row is a text-track row plus a codec-track row. With ``P`` = text projection, ``C`` = talker codec embedding
and ``F`` = summed frame embedding (see :mod:`.lm_tables`):
- prefix: P(ids[0:3]); control rows: text track pad..pad, bos; codec track C(think|nothink), C(think_bos),
  [C(language)], C(think_eos), speaker embedding, C(codec_pad);
- ICL streaming (default): ref transcript + target text + eod laid alongside [C(codec_bos), F(prompt frames)];
  leftover text becomes the trailing rows (else a single pad row);
- ICL non-streaming: all text (+ C(codec_pad)), then codec_bos and the prompt frames (+ pad);
- x-vector streaming: P(ids[3]) + C(codec_bos); trailing P(ids[4:-5]) + eod;
- x-vector non-streaming: all text and eod (+ C(codec_pad)), then pad + C(codec_bos).
Decode step k adds trailing[k] (or the pad row once exhausted) to F(frame k).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.shared.errors import InputError

from .lm_tables import LMTables


@dataclass(frozen=True)
class TalkerPrompt:
    """``prefill`` (L, H): the talker's input rows at positions 0..L-1; ``trailing`` (M, H): text rows added to
    the generated frames' rows, one per frame; ``pad`` (H,): the text row once ``trailing`` is exhausted."""

    prefill: np.ndarray
    trailing: np.ndarray
    pad: np.ndarray

    def text_row(self, k: int) -> np.ndarray:
        return self.trailing[k] if k < self.trailing.shape[0] else self.pad


def language_codec_id(language: str | None, ids: Mapping) -> int | None:
    """The codec id of ``language`` (case-insensitive), or None for Auto / None (no language tag)."""
    if language is None or language.strip().lower() == "auto":
        return None
    table = ids["codec_language_id"]
    key = language.strip().lower()
    if key not in table:
        raise InputError(f"unknown language {language!r}; choose Auto or one of {', '.join(sorted(table))}")
    return int(table[key])


def _prefix_and_control(tables: LMTables, ids: Sequence[int], ids_cfg: Mapping, language: str | None,
                        spk: np.ndarray) -> np.ndarray:
    lang = language_codec_id(language, ids_cfg)
    head = [ids_cfg["codec_think_id"] if lang is not None else ids_cfg["codec_nothink_id"],
            ids_cfg["codec_think_bos_id"], *([lang] if lang is not None else []), ids_cfg["codec_think_eos_id"]]
    codec = np.concatenate([tables.codec(head), spk[None], tables.codec([ids_cfg["codec_pad_id"]])])
    text = np.repeat(tables.tts_pad[None], codec.shape[0], axis=0)
    text[-1] = tables.tts_bos
    return np.concatenate([tables.proj(ids[:3]), text + codec]).astype(np.float32)


def build_talker_prompt(tables: LMTables, ids_cfg: Mapping, text_ids: Sequence[int], spk_embedding: np.ndarray, *,
                        language: str | None = None, ref_ids: Sequence[int] | None = None,
                        ref_codes: np.ndarray | None = None, non_streaming: bool = False) -> TalkerPrompt:
    """Prefill and trailing rows. ICL when ``ref_codes`` (T12, 16) and ``ref_ids`` are given, x-vector only
    when both are None. ``text_ids`` / ``ref_ids`` are the templated ids of :mod:`.text_tokens`."""
    ids = [int(t) for t in text_ids]
    if len(ids) < 9:
        raise InputError("the text has no tokens between the chat template's prefix and suffix")
    spk = np.asarray(spk_embedding, dtype=np.float32).reshape(-1)
    if spk.shape[0] != tables.hidden:
        raise InputError(f"speaker embedding has {spk.shape[0]} values, the talker needs {tables.hidden}")
    if (ref_codes is None) != (ref_ids is None):
        raise InputError("ICL voice cloning needs both the prompt codes and the prompt transcript")
    head = _prefix_and_control(tables, ids, ids_cfg, language, spk)
    pad, eod = tables.tts_pad, tables.tts_eod
    c_pad, c_bos = (tables.codec([ids_cfg[k]])[0] for k in ("codec_pad_id", "codec_bos_id"))

    if ref_codes is not None:
        ref = [int(t) for t in ref_ids]
        if len(ref) < 6:
            raise InputError("the prompt transcript has no tokens")
        text_rows = np.concatenate([tables.proj(ref[3:-2] + ids[3:-5]), eod[None]])
        codec_rows = np.concatenate([c_bos[None], tables.frame_rows(ref_codes)])
        nt, nc = text_rows.shape[0], codec_rows.shape[0]
        if non_streaming:
            body = np.concatenate([text_rows + c_pad, codec_rows + pad])
            trailing = pad[None]
        elif nt > nc:
            body, trailing = text_rows[:nc] + codec_rows, text_rows[nc:]
        else:
            body = np.concatenate([text_rows, np.repeat(pad[None], nc - nt, axis=0)]) + codec_rows
            trailing = pad[None]
    elif non_streaming:
        body = np.concatenate([tables.proj(ids[3:-5]) + c_pad, (eod + c_pad)[None], (pad + c_bos)[None]])
        trailing = pad[None]
    else:
        body = tables.proj(ids[3:4]) + c_bos
        trailing = np.concatenate([tables.proj(ids[4:-5]), eod[None]])
    return TalkerPrompt(np.ascontiguousarray(np.concatenate([head, body]), dtype=np.float32),
                        np.ascontiguousarray(trailing, dtype=np.float32), pad.copy())
