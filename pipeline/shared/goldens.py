"""What every engine's ``verify`` shares: a goldens ``.npz`` read with a clear message, one result per stage,
and the table the CLI prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.shared.errors import InputError


@dataclass
class StageResult:
    stage: str
    max_abs_err: float
    tolerance: float | None
    passed: bool
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


# a key only one engine's goldens have: named when the wrong engine's goldens are given
_GOLDENS_OF = {"talker_tf_logits": "Qwen3-TTS", "llm_tf_logp": "CosyVoice3"}


def load_npz(path: Path | str, required: list[str], kind: str = "goldens") -> dict[str, np.ndarray]:
    """A goldens ``.npz`` as a dict; :class:`InputError` naming the file when it is missing, unreadable or lacks
    one of ``required``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            g = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise InputError(f"{kind} file {path} does not exist") from None
    except Exception as e:
        raise InputError(f"{path} is not a readable {kind} .npz ({e})") from e
    missing = [k for k in required if k not in g]
    other = next((e for k, e in _GOLDENS_OF.items() if k in g and k not in required), None)
    if missing and other:
        raise InputError(f"{path} holds {other} goldens; this checkpoint or bundle is another engine's: give the "
                         "goldens made for it")
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}; see the fixture README for the {kind} format")
    return g



def format_table(results: list[StageResult]) -> str:
    lines = [f"{'stage':<26} {'max abs err':>12} {'tolerance':>10}  result"]
    for r in results:
        tol = "exact" if r.tolerance is None else f"{r.tolerance:.0e}"
        lines.append(f"{r.stage:<26} {r.max_abs_err:>12.3e} {tol:>10}  {'ok' if r.passed else 'FAIL'}"
                     + (f"  ({r.detail})" if r.detail else ""))
    return "\n".join(lines)
