"""Qwen3-TTS's text tokenizer as a ``tokenizers`` tokenizer.json (spec §2.1).

Upstream loads ``Qwen2TokenizerFast`` from vocab.json + merges.txt + tokenizer_config.json: Qwen2 byte-level BPE
(NFC, Qwen2 split regex, ByteLevel; 151643 entries) plus every token of ``added_tokens_decoder`` at its declared id
(151643..151675 in the release: Qwen3's and the seven TTS tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

from pipeline.shared.errors import SourceError
from pipeline.shared.qwen2_bpe import qwen2_bpe

# Tokens the talker prefill needs at fixed ids (config.json repeats them; checked against it).
REQUIRED = {"<|im_start|>": 151644, "<|im_end|>": 151645, "<tts_pad>": 151671, "<tts_text_bos>": 151672,
            "<tts_text_eod>": 151673}


def _added_tokens(cfg_path: Path) -> list[tuple[int, str, dict]]:
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        out = []
        for tid, spec in (cfg.get("added_tokens_decoder") or {}).items():
            flags = {k: bool(spec[k]) for k in ("special", "normalized", "lstrip", "rstrip", "single_word")
                     if k in spec}
            out.append((int(tid), str(spec["content"]), flags))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SourceError(f"{cfg_path}: unreadable ({e})") from e
    if not out:
        raise SourceError(f"{cfg_path} declares no added tokens (added_tokens_decoder); not a Qwen3-TTS tokenizer")
    return sorted(out)


def build_tokenizer(ckpt_dir: Path) -> Tokenizer:
    """The tokenizer of ``ckpt_dir`` (vocab.json, merges.txt, tokenizer_config.json); ids checked."""
    ckpt_dir = Path(ckpt_dir)
    vocab, merges, cfg = (ckpt_dir / n for n in ("vocab.json", "merges.txt", "tokenizer_config.json"))
    for p in (vocab, merges, cfg):
        if not p.is_file():
            raise SourceError(f"{p} is missing (the text tokenizer files)")
    tok = qwen2_bpe(vocab, merges)
    for tid, content, flags in _added_tokens(cfg):
        tok.add_special_tokens([AddedToken(content, **{"special": True, "normalized": False, **flags})])
        if tok.token_to_id(content) != tid:
            raise SourceError(f"{cfg}: {content} lands on id {tok.token_to_id(content)}, not the declared {tid} "
                              "(the added tokens must follow the BPE entries without gaps)")
    for content, tid in REQUIRED.items():
        if tok.encode(content, add_special_tokens=False).ids != [tid]:
            raise SourceError(f"{cfg}: {content} does not encode to [{tid}], which the talker prefill needs")
    return tok
