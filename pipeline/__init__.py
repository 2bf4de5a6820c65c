"""cosyvoice-rk runtime: torch-free CosyVoice3 (llama.cpp LLM, ONNX Runtime / RKNN flow, ONNX HiFT)."""

from .bundle import Bundle
from .errors import BackendError, BundleError, CosyVoiceRKError, InputError, SourceError

__all__ = ["Bundle", "BackendError", "BundleError", "CosyVoiceRKError", "InputError", "SourceError"]
__version__ = "0.1.0"
