"""Qwen2's byte-level BPE as a ``tokenizers`` Tokenizer, built from ``vocab.json`` + ``merges.txt`` as
``Qwen2TokenizerFast`` builds it (NFC, Qwen2's split regex, ByteLevel): the base both engines' text tokenizers add
their special tokens to (CosyVoice3's in ``cosyvoice3/tokenizer.py``, Qwen3-TTS's in
``qwen3_tts/convert/lm_tokenizer.py``)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from pipeline.shared.errors import SourceError

# The split pattern of Qwen2's own tokenizer.json.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_BPE_SIZE = 151643  # ids 0..151642; added tokens come after


def qwen2_bpe(vocab_json: Path | str, merges_txt: Path | str, *, what: str = "the text tokenizer files") -> Tokenizer:
    """The Qwen2 BPE of these files, without added tokens; :class:`SourceError` when a file is missing or is not
    a Qwen2 vocabulary (``what`` names the files in the message)."""
    vocab_json, merges_txt = Path(vocab_json), Path(merges_txt)
    for p in (vocab_json, merges_txt):
        if not p.is_file():
            raise SourceError(f"{p} is missing ({what})")
    try:
        bpe = models.BPE.from_file(str(vocab_json), str(merges_txt), dropout=None, unk_token=None,
                                   continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                   byte_fallback=False)
    except Exception as e:  # tokenizers raises plain Exception for unreadable files
        raise SourceError(f"{vocab_json} / {merges_txt} are not a BPE vocabulary ({e})") from e
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != QWEN2_BPE_SIZE:
        raise SourceError(f"{vocab_json} has {size} entries; a Qwen2 vocabulary has {QWEN2_BPE_SIZE} "
                          "(ids 0..151642, the added tokens come after)")
    return tok
