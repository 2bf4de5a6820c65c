"""The CosyVoice3 engine (Fun-CosyVoice3-0.5B): speech-token LLM on llama.cpp, flow-matching DiT on ONNX Runtime or
the RK3588 NPU, HiFT vocoder on ONNX Runtime; its converter in ``convert/``, its bench, verify and quality tools."""

from typing import Any


def open_tts(bundle: Any, **options: Any) -> Any:
    """The engine's :class:`pipeline.engines.base.TTSEngine` for a CosyVoice3 bundle (see
    :func:`pipeline.engines.open_tts`)."""
    from pipeline.engines.cosyvoice3.tts import CosyVoiceRK

    return CosyVoiceRK(bundle, **options)


def text_frontend(bundle: Any) -> Any:
    """What the page's preview and ``normalize`` split text with, for a CosyVoice3 bundle (no model loaded)."""
    from pipeline.engines.cosyvoice3.tokenizer import TextTokenizer
    from pipeline.shared.text import TextFrontend

    return TextFrontend(TextTokenizer.from_bundle(bundle))
