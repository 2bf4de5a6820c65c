"""Read upstream's hyperpyyaml ``cosyvoice3.yaml`` without hyperpyyaml, torch or upstream code.

Every ``!new:`` / ``!name:`` / ``!apply:`` tag is dropped (the node keeps its mapping or list) and
``!ref <key>`` is resolved against top-level keys, including simple arithmetic such as
``<chunk_size> * <token_mel_ratio>``. The result is a plain dict the converter reads dims from.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.shared.errors import SourceError


class _Ref:
    def __init__(self, expr: str) -> None:
        self.expr = expr


class _Loader(yaml.SafeLoader):
    pass


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


def _construct_ref(loader: yaml.SafeLoader, node: yaml.Node) -> _Ref:
    return _Ref(str(loader.construct_scalar(node)))


_Loader.add_constructor("!ref", _construct_ref)
_Loader.add_multi_constructor("!", _construct_tagged)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv}


def _eval_arith(expr: str) -> Any:
    def ev(n: ast.AST) -> Any:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        raise ValueError(expr)

    return ev(ast.parse(expr, mode="eval"))


def _resolve(node: Any, root: dict, depth: int = 0) -> Any:
    if depth > 50:
        raise SourceError("cosyvoice3.yaml: !ref cycle")
    if isinstance(node, _Ref):
        keys = re.findall(r"<([^>]+)>", node.expr)
        if node.expr.strip() == f"<{keys[0]}>" if keys else False:
            return _resolve(_lookup(root, keys[0]), root, depth + 1)
        expr = node.expr
        for k in keys:
            expr = expr.replace(f"<{k}>", repr(_resolve(_lookup(root, k), root, depth + 1)))
        try:
            return _eval_arith(expr)
        except (ValueError, SyntaxError, TypeError):
            return expr
    if isinstance(node, dict):
        return {k: _resolve(v, root, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root, depth) for v in node]
    return node


def _lookup(root: dict, dotted: str) -> Any:
    cur: Any = root
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise SourceError(f"cosyvoice3.yaml: !ref <{dotted}> names no key")
        cur = cur[part]
    return cur


def load_yaml_config(path: Path) -> dict:
    """Parse ``cosyvoice3.yaml`` into plain Python values (tags dropped, refs resolved)."""
    try:
        raw = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, yaml.YAMLError) as e:
        raise SourceError(f"cannot read {path}: {e}") from e
    if not isinstance(raw, dict):
        raise SourceError(f"{path} is not a CosyVoice config (top level is not a mapping)")
    return _resolve(raw, raw)


def load_source_config(src: Path) -> dict:
    """Config of an upstream checkpoint folder: ``{"yaml": ..., "qwen": config.json}``.

    Checks that the parts every later stage depends on are present and names the missing one.
    """
    src = Path(src)
    yml = src / "cosyvoice3.yaml"
    if not yml.is_file():
        other = [p.name for p in src.glob("cosyvoice*.yaml")]
        hint = f" (found {', '.join(other)}: CosyVoice1/2 checkpoints are not supported)" if other else ""
        raise SourceError(f"{src} is not a CosyVoice3 checkpoint: cosyvoice3.yaml is missing{hint}")
    cfg = load_yaml_config(yml)
    for key in ("llm", "flow", "hift"):
        if not isinstance(cfg.get(key), dict):
            raise SourceError(f"{yml}: section '{key}' is missing or not a mapping")
    qcfg_path = src / "CosyVoice-BlankEN" / "config.json"
    try:
        qwen = json.loads(qcfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SourceError(f"{src}: CosyVoice-BlankEN/config.json is missing (the Qwen2 config)") from e
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"{qcfg_path}: unreadable ({e})") from e
    if qwen.get("model_type") != "qwen2":
        raise SourceError(f"{qcfg_path}: model_type is {qwen.get('model_type')!r}, expected 'qwen2'")
    return {"yaml": cfg, "qwen": qwen}


def tokenizer_version(yaml_cfg: dict) -> tuple[str, str]:
    """Which text tokenizer upstream builds for this yaml, and why: ``get_tokenizer`` is
    ``get_qwen_tokenizer(token_path, skip_special_tokens, version='cosyvoice2')``, so without a ``version`` key
    it is CosyVoice2Tokenizer (no ``<|endofsystem|>``, no CMU/pinyin tokens); another value raises there."""
    from pipeline.engines.cosyvoice3.tokenizer import TOKENIZER_VERSIONS

    gt = yaml_cfg.get("get_tokenizer")
    if not isinstance(gt, dict):
        raise SourceError("cosyvoice3.yaml: get_tokenizer is missing or not a mapping (upstream builds the text "
                          "tokenizer from it)")
    if "version" not in gt:
        return "cosyvoice2", "cosyvoice3.yaml's get_tokenizer has no version: upstream's default, cosyvoice2"
    v = gt["version"]
    if v not in TOKENIZER_VERSIONS:
        raise SourceError(f"cosyvoice3.yaml: get_tokenizer.version is {v!r}; upstream knows "
                          f"{' and '.join(TOKENIZER_VERSIONS)} (anything else raises ValueError there)")
    return str(v), f"cosyvoice3.yaml's get_tokenizer.version: {v}"
