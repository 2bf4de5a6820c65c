"""Exceptions whose message is meant for the user as it is (CLI and UI print ``str(e)``)."""


class CosyVoiceRKError(Exception):
    """Base of all errors with a user-facing message."""


class SourceError(CosyVoiceRKError):
    """The upstream checkpoint folder is missing, incomplete or not CosyVoice3."""


class BundleError(CosyVoiceRKError):
    """The model bundle is missing, corrupt or from an incompatible format version."""


class InputError(CosyVoiceRKError):
    """Bad user input (text, audio, options)."""


class BackendError(CosyVoiceRKError):
    """A runtime backend (llama.cpp, ONNX Runtime, RKNN) is unavailable or failed."""


class PresetError(CosyVoiceRKError):
    """A saved voice is missing, corrupt, or a name is not allowed."""


class Cancelled(Exception):
    """Work was stopped by the caller's ``should_stop`` (not an error: nothing is reported as failed)."""
