"""cosyvoice-rk runtime, torch-free. Layout:

- ``pipeline/engines/``: one package per speech engine (``cosyvoice3/``: llama.cpp LLM, ONNX Runtime / RKNN flow,
  ONNX HiFT, and its converter in ``cosyvoice3/convert/``), the registry (``engines/__init__.py``) and the one
  interface they share (``engines/base.py``).
- ``pipeline/shared/``: what every engine uses once: audio, text normalisation and splitting, voice presets,
  the llama.cpp wrapper, CPU placement, bundle files and hashes, atomic writes, errors, prompt transcription.
- ``pipeline/`` itself: the studio around them: the command line, the background worker, the first-run setup.
"""

from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import BackendError, BundleError, CosyVoiceRKError, InputError, SourceError

__all__ = ["Bundle", "BackendError", "BundleError", "CosyVoiceRKError", "InputError", "SourceError"]
__version__ = "0.1.0"
