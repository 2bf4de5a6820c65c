"""What a bundle was converted from, in words: the LLM checkpoint (upstream's base ``llm.pt`` or RL-tuned
``llm.rl.pt``), the text tokenizer upstream would build for it, and the release revision. Read from the manifest
only (``check`` and the page's Status tab)."""

from __future__ import annotations

from typing import Any


def source_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """``{"llm": {choice, file, size, sha256} | None, "tokenizer": {version, upstream_class, why} | None,
    "download": {repo_id, revision, checked_against} | None}``; None where the bundle does not record it (made
    before these were recorded, or without tokenizer files)."""
    src = manifest.get("source") or {}
    return {"llm": src.get("llm"), "tokenizer": (manifest.get("frontend") or {}).get("tokenizer_version"),
            "download": src.get("download")}


def describe_source(manifest: dict[str, Any]) -> list[str]:
    """Lines for the CLI."""
    info = source_info(manifest)
    llm, tok, dl = info["llm"], info["tokenizer"], info["download"]
    lines = []
    if llm:
        kind = "upstream's RL-tuned LLM" if llm.get("choice") == "rl" else "upstream's base LLM"
        lines.append(f"LLM checkpoint: {llm.get('file')} ({kind}), {llm.get('size', 0):,} B, "
                     f"sha256 {str(llm.get('sha256'))[:16]}…")
    else:
        lines.append("LLM checkpoint: not recorded (a bundle converted before it was recorded)")
    if tok:
        lines.append(f"text tokenizer: {tok.get('upstream_class')} ({tok.get('why')})")
    if dl:
        lines.append(f"downloaded from {dl.get('repo_id')} @ {str(dl.get('revision'))[:8]} "
                     f"(checked against {'the release table' if dl.get('checked_against') == 'table' else 'the hub'})")
    return lines
