"""The Qwen3-TTS engine (Qwen3-TTS-12Hz-0.6B-Base voice cloning), torch-free: talker and code predictor on
llama.cpp, prompt encoder, speaker encoder and decoder on ONNX Runtime, glue in numpy
(``../shared/spec/upstream-qwen3-tts.md``); its converter in ``convert/``."""

from typing import Any


def open_tts(bundle: Any, **options: Any) -> Any:
    """The engine's :class:`pipeline.engines.base.TTSEngine` for a Qwen3-TTS bundle (see
    :func:`pipeline.engines.open_tts`)."""
    from pipeline.engines.qwen3_tts.tts import Qwen3TTS

    return Qwen3TTS(bundle, **options)


def text_frontend(bundle: Any) -> Any:
    """What the page's preview and ``normalize`` split text with, for a Qwen3-TTS bundle (no model loaded)."""
    from pipeline.engines.qwen3_tts.text import SegmentText
    from pipeline.engines.qwen3_tts.text_tokens import TextTokens

    return SegmentText(TextTokens(bundle.root / bundle.manifest["lm"]["files"]["tokenizer"]))
