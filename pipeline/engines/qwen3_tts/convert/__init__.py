"""Host-side conversion: a Qwen3-TTS-12Hz Base checkpoint folder → on-device bundle (needs the ``convert`` extra:
torch, onnx). Nothing here is imported by the runtime."""
