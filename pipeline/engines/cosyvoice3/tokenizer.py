"""CosyVoice3's text tokenizer: Qwen2 byte-level BPE plus CosyVoice3's special tokens (``tokenizers`` only).

Upstream (``cosyvoice/tokenizer/tokenizer.py``, ``CosyVoice3Tokenizer``) loads CosyVoice-BlankEN with
``AutoTokenizer`` (a Qwen2 tokenizer with exactly three added tokens, ids 151643..151645) and then adds
its own special tokens in list order. ``<|endofprompt|>`` therefore lands on 151646, the id the LLM
hard-codes. :func:`build_tokenizer` rebuilds that tokenizer from ``vocab.json`` + ``merges.txt``; the
converter saves it as ``tokenizer.json`` and :class:`TextTokenizer` loads it at runtime. Without
``get_tokenizer.version: cosyvoice3`` in the checkpoint's yaml upstream builds CosyVoice2Tokenizer instead (the same
list up to ``[mn]``; no ``<|endofsystem|>``, no CMU/pinyin tokens): ``version="cosyvoice2"`` (docs/release.md §4).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import AddedToken, Tokenizer

from pipeline.shared.errors import BundleError, SourceError
from pipeline.shared.qwen2_bpe import QWEN2_BPE_SIZE, qwen2_bpe

if TYPE_CHECKING:
    from pipeline.shared.bundle import Bundle

# Qwen2's added tokens: the ids right after the 151643 BPE entries.
QWEN2_ADDED_TOKENS: list[str] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CMU_PHONES = (
    "AA AA0 AA1 AA2 AE AE0 AE1 AE2 AH AH0 AH1 AH2 AO AO0 AO1 AO2 AW AW0 AW1 AW2 AY AY0 AY1 AY2 "
    "B CH D DH EH EH0 EH1 EH2 ER ER0 ER1 ER2 EY EY0 EY1 EY2 F G HH IH IH0 IH1 IH2 IY IY0 IY1 IY2 "
    "JH K L M N NG OW OW0 OW1 OW2 OY OY0 OY1 OY2 P R S SH T TH UH UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH"
)
_PINYIN = (
    "a ai an ang ao b c ch d e ei en eng f g h i ian in ing iu ià iàn iàng iào iá ián iáng iáo iè ié "
    "iòng ióng iù iú iā iān iāng iāo iē iě iōng iū iǎ iǎn iǎng iǎo iǒng iǔ j k l m n o ong ou p q r s "
    "sh t u uang ue un uo uà uài uàn uàng uá uái uán uáng uè ué uì uí uò uó uā uāi uān uāng uē uě uī "
    "uō uǎ uǎi uǎn uǎng uǐ uǒ vè w x y z zh à ài àn àng ào á ái án áng áo è èi èn èng èr é éi én éng "
    "ér ì ìn ìng í ín íng ò òng òu ó óng óu ù ùn ú ún ā āi ān āng āo ē ēi ēn ēng ě ěi ěn ěng ěr ī īn "
    "īng ō ōng ōu ū ūn ǎ ǎi ǎn ǎng ǎo ǐ ǐn ǐng ǒ ǒng ǒu ǔ ǔn ǘ ǚ ǜ"
)
# CosyVoice3Tokenizer's additional_special_tokens exactly as upstream lists them (commit ace7c47).
# The first two already exist in Qwen2 and keep ids 151644/151645; the rest get 151646.. in order.
COSYVOICE3_SPECIAL_TOKENS: list[str] = [
    "<|im_start|>", "<|im_end|>", "<|endofprompt|>",
    "[breath]", "<strong>", "</strong>", "[noise]", "[laughter]", "[cough]", "[clucking]", "[accent]",
    "[quick_breath]", "<laughter>", "</laughter>", "[hissing]", "[sigh]", "[vocalized-noise]",
    "[lipsmack]", "[mn]", "<|endofsystem|>",
    *(f"[{p}]" for p in _CMU_PHONES.split()),
    *(f"[{p}]" for p in _PINYIN.split()),
]
# CosyVoice2Tokenizer's list: what upstream builds when cosyvoice3.yaml's get_tokenizer has no
# ``version: cosyvoice3`` (get_qwen_tokenizer's default is 'cosyvoice2'): no <|endofsystem|>, no CMU/pinyin tokens.
COSYVOICE2_SPECIAL_TOKENS: list[str] = COSYVOICE3_SPECIAL_TOKENS[:COSYVOICE3_SPECIAL_TOKENS.index("<|endofsystem|>")]
TOKENIZER_VERSIONS: dict[str, list[str]] = {"cosyvoice2": COSYVOICE2_SPECIAL_TOKENS,
                                            "cosyvoice3": COSYVOICE3_SPECIAL_TOKENS}
UPSTREAM_CLASS = {"cosyvoice2": "CosyVoice2Tokenizer", "cosyvoice3": "CosyVoice3Tokenizer"}
ENDOFSYSTEM = "<|endofsystem|>"
ENDOFPROMPT = "<|endofprompt|>"
# Upstream's Qwen2LM hard-codes this id; equal to convert.upstream.ENDOFPROMPT_ID (the runtime
# does not import the converter package).
ENDOFPROMPT_ID = 151646


def _special(content: str) -> AddedToken:
    # Upstream's add_special_tokens: matched literally, never normalised or stripped.
    return AddedToken(content, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)


def build_tokenizer(vocab_json: Path, merges_txt: Path, *,
                    added_tokens: Sequence[tuple[str, dict]] | None = None, version: str = "cosyvoice3") -> Tokenizer:
    """Qwen2 byte-level BPE from ``vocab_json`` + ``merges_txt`` with Qwen2's and CosyVoice's special tokens.

    ``version``: the special-token list of upstream's ``get_qwen_tokenizer(version=...)``: ``cosyvoice3``
    (CosyVoice3Tokenizer) or ``cosyvoice2`` (CosyVoice2Tokenizer, upstream's default when the yaml names none).

    ``added_tokens``: the tokens a ``tokenizer_config.json`` declares (content, AddedToken flags) in id
    order, as ``AutoTokenizer`` would add them; default Qwen2's three. Raises :class:`SourceError` if the
    files are not a Qwen2 vocabulary or the special ids come out shifted
    (``<|endofprompt|>`` must encode to ``[151646]``).
    """
    if version not in TOKENIZER_VERSIONS:
        raise SourceError(f"unknown tokenizer version {version!r}: upstream's get_qwen_tokenizer knows "
                          f"{' and '.join(TOKENIZER_VERSIONS)} (any other value raises ValueError there)")
    vocab_json = Path(vocab_json)
    tok = qwen2_bpe(vocab_json, merges_txt, what="CosyVoice-BlankEN's Qwen2 tokenizer files")
    declared = added_tokens if added_tokens is not None else [(t, {}) for t in QWEN2_ADDED_TOKENS]
    for content, flags in declared:
        tok.add_special_tokens([AddedToken(content, **{"special": True, "normalized": False, **flags})])
    tok.add_special_tokens([_special(t) for t in TOKENIZER_VERSIONS[version]])
    for i, t in enumerate(QWEN2_ADDED_TOKENS):
        if tok.token_to_id(t) != QWEN2_BPE_SIZE + i:
            raise SourceError(f"{vocab_json}: {t} lands on id {tok.token_to_id(t)}, not {QWEN2_BPE_SIZE + i}")
    got = tok.encode(ENDOFPROMPT, add_special_tokens=False).ids
    if got != [ENDOFPROMPT_ID]:
        raise SourceError(f"{vocab_json}: {ENDOFPROMPT} encodes to {got}, CosyVoice3 hard-codes "
                          f"[{ENDOFPROMPT_ID}]; the special-token ids are shifted. The tokenizer must have exactly "
                          "the Qwen2 added tokens 151643..151645 before CosyVoice3's list (a Qwen2.5/Qwen3 "
                          "tokenizer_config.json declares more)")
    return tok


class TextTokenizer:
    """The runtime text tokenizer: ``encode`` gives the ids the LLM's text embedding is indexed with."""

    def __init__(self, tokenizer: Tokenizer, *, source: str = "tokenizer",
                 endofprompt_id: int = ENDOFPROMPT_ID) -> None:
        self._tok = tokenizer
        self.source = source
        got = self._tok.encode(ENDOFPROMPT, add_special_tokens=False).ids
        if got != [endofprompt_id]:
            raise BundleError(f"{source}: {ENDOFPROMPT} encodes to {got}, the LLM expects [{endofprompt_id}]; "
                              "this tokenizer does not belong to a CosyVoice3 bundle (convert again)")
        self._endofprompt_id = endofprompt_id

    @classmethod
    def from_file(cls, tokenizer_json: Path | str, *, endofprompt_id: int = ENDOFPROMPT_ID) -> TextTokenizer:
        path = Path(tokenizer_json)
        if not path.is_file():
            raise BundleError(f"{path} is missing (the text tokenizer)")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception for bad JSON
            raise BundleError(f"{path} is not a readable tokenizer.json ({e})") from e
        return cls(tok, source=str(path), endofprompt_id=endofprompt_id)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> TextTokenizer:
        name = (bundle.manifest.get("frontend") or {}).get("tokenizer")
        if not name:
            raise BundleError("this bundle has no text tokenizer "
                              "(converted from a checkpoint without CosyVoice-BlankEN/vocab.json)")
        expected = (bundle.manifest.get("constants") or {}).get("endofprompt_id") or ENDOFPROMPT_ID
        return cls.from_file(bundle.path(name), endofprompt_id=int(expected))

    @property
    def endofprompt_id(self) -> int:
        return self._endofprompt_id

    @property
    def version(self) -> str:
        """``cosyvoice3`` or ``cosyvoice2``: which of upstream's tokenizers this one is (it has
        ``<|endofsystem|>`` and the CMU/pinyin tokens only as cosyvoice3)."""
        return "cosyvoice3" if self._tok.token_to_id(ENDOFSYSTEM) is not None else "cosyvoice2"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: no BOS/EOS; special tokens such as ``[breath]`` are matched literally."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; keeps special tokens unless asked (upstream's decode skips them)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)
