"""What will be read: the normalised text cut into the segments the LLM gets, without any model.

Segment lengths are counted in text tokens, so a tokenizer is needed, never a model: the bundle's
``tokenizer.json`` when there is a bundle, else the Qwen2 BPE files of this repository
(``assets/qwen2-tokenizer``: CosyVoice3's vocabulary, but Qwen2's full merge list where the release's is trimmed, so
ordinary text can get other ids and, rarely, other cuts than with a real bundle). :func:`preview_tokenizer` says
which one it used. Used by ``cosyvoice-rk normalize`` and the page's preview.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pipeline.shared.errors import BundleError
from pipeline.shared.text.frontend import TextFrontend

REPO_TOKENIZER = Path(__file__).resolve().parents[3] / "assets" / "qwen2-tokenizer"


@functools.lru_cache(maxsize=4)
def _load(bundle: str | None, stamp: float) -> tuple[Any, str]:
    from pipeline.engines.cosyvoice3.tokenizer import TextTokenizer, build_tokenizer

    if bundle is not None:
        from pipeline.engines import text_frontend
        from pipeline.shared.bundle import Bundle

        return text_frontend(Bundle.load(bundle, check="none")), f"the bundle's tokenizer ({bundle})"
    tok = TextTokenizer(build_tokenizer(REPO_TOKENIZER / "vocab.json", REPO_TOKENIZER / "merges.txt"),
                        source=str(REPO_TOKENIZER))
    return TextFrontend(tok), f"the Qwen2 tokenizer files in {REPO_TOKENIZER} (no bundle)"


def preview_tokenizer(bundle: Path | str | None) -> tuple[Any, str]:
    """A :class:`TextFrontend` to preview with and a sentence saying where its tokenizer came from.

    ``bundle``: a bundle folder; used if it has a ``manifest.json``, else the repository's tokenizer files.
    Raises :class:`BundleError` if neither can be read. Cached per bundle (until its manifest changes).
    """
    manifest = Path(bundle) / "manifest.json" if bundle is not None else None
    if manifest is not None and manifest.is_file():
        return _load(str(Path(bundle).resolve()), manifest.stat().st_mtime)
    if not (REPO_TOKENIZER / "vocab.json").is_file():
        where = f"no bundle at {bundle}, and " if bundle is not None else ""
        raise BundleError(f"{where}no tokenizer files at {REPO_TOKENIZER}: the preview needs a bundle "
                          "(cosyvoice-rk convert) or this repository's assets/qwen2-tokenizer")
    return _load(None, 0.0)


def preview(text: str, language: str = "auto", bundle: Path | str | None = None) -> list[str]:
    """The segments ``text`` will be read as (normalised, split; one LLM run each). Raises ``InputError``
    with the same message synthesis would give for bad text, ``BundleError`` without any tokenizer."""
    frontend, _ = preview_tokenizer(bundle)
    return frontend.split(text, language)
