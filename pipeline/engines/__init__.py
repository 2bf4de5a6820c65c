"""Speech engines: one package each (its stages, its converter, its bundle manifest sections), all reached through
one narrow interface, :class:`pipeline.engines.base.TTSEngine`.

    tts = open_tts("models/bundle", speakers_dir="speakers")   # the bundle's manifest says which engine
    tts.add_voice("Anna", "anna.wav", "Привет, меня зовут Анна.", language="ru")
    for chunk in tts.create_chunks("Добрый день!", voice="Anna"): play(chunk.audio)

This module is data only (light enough for the web process): which engines exist, what their bundles must hold.
An engine package is imported only when a bundle of its kind is opened.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.shared.errors import BundleError

if TYPE_CHECKING:
    from pipeline.engines.base import TTSEngine
    from pipeline.shared.bundle import Bundle


@dataclass(frozen=True)
class EngineInfo:
    name: str  # as written in a bundle manifest's "engine" and a voice preset's "engine"
    title: str  # for people
    package: str  # its package; ``<package>.open_tts(bundle, **options)`` opens a bundle of this kind
    sections: tuple[str, ...]  # manifest sections a bundle of this engine must have
    # what the page and the API offer with it (its TTSEngine.capabilities says the same; a test checks)
    modes: tuple[str, ...]
    speed: bool  # a speed other than 1.0
    tags: bool  # CosyVoice3's control tags ([breath], <strong>…) in the text


ENGINES: dict[str, EngineInfo] = {
    "cosyvoice3": EngineInfo("cosyvoice3", "CosyVoice3", "pipeline.engines.cosyvoice3",
                             ("constants", "llm", "flow", "hift", "files"),
                             ("zero_shot", "cross_lingual", "instruct2"), speed=True, tags=True),
    "qwen3-tts": EngineInfo("qwen3-tts", "Qwen3-TTS", "pipeline.engines.qwen3_tts",
                            ("constants", "lm", "prompt", "decoder", "files"),
                            ("zero_shot", "cross_lingual"), speed=False, tags=False),
}
# bundles converted before the manifest named its engine are CosyVoice3 bundles
DEFAULT_ENGINE = "cosyvoice3"


def engine_name(manifest: dict[str, Any]) -> str:
    """The engine a bundle manifest (or a voice preset's metadata) belongs to."""
    return str(manifest.get("engine") or DEFAULT_ENGINE)


def engine_info(name: str, *, where: str = "") -> EngineInfo:
    """The engine called ``name``; a :class:`BundleError` naming the known ones otherwise."""
    try:
        return ENGINES[name]
    except KeyError:
        known = ", ".join(ENGINES)
        raise BundleError(f"{where or 'the bundle'} is for the engine {name!r}, which this version of cosyvoice-rk "
                          f"does not know (it knows {known}); update cosyvoice-rk or convert the checkpoint "
                          "again with this version") from None


def engine_title(name: str) -> str:
    info = ENGINES.get(name)
    return info.title if info else name


def open_tts(bundle: Bundle | Path | str, **options: Any) -> TTSEngine:
    """Open a bundle with the engine its manifest names. ``options``: ``speakers_dir``, ``quant``, ``n_threads``,
    ``cpus``, ``log`` for every engine, and the engine's own (CosyVoice3: ``flow_backend``, ``npu_cores``,
    ``flow_fast``, ``flow_steps``)."""
    from pipeline.shared.bundle import Bundle

    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    info = engine_info(engine_name(b.manifest), where=f"bundle {b.root}")
    return importlib.import_module(info.package).open_tts(b, **options)


def text_frontend(bundle: Bundle) -> Any:
    """The bundle's engine's text splitter (``split(text, language)``), tokenizer only: no model is loaded."""
    info = engine_info(engine_name(bundle.manifest), where=f"bundle {bundle.root}")
    return importlib.import_module(info.package).text_frontend(bundle)
