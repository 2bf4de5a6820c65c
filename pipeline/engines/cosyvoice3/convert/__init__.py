"""Host-side conversion: upstream CosyVoice3 checkpoint folder → on-device bundle.

Needs the ``convert`` extra (torch, onnx). Nothing here is imported by the runtime.
"""

from pipeline.engines.cosyvoice3.convert.bundle_writer import QUANTS, convert_checkpoint

__all__ = ["QUANTS", "convert_checkpoint"]
