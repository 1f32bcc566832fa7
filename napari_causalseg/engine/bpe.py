"""CLIP's byte-pair encoding, read from OpenAI's vocabulary file (see bpe_source.py).

Why not open_clip's tokenizer object: importing anything from open_clip runs its
package `__init__`, which imports torchvision and with it torch._dynamo, sympy and
triton: about 230 MB of resident memory and ~1.5 s before the first note is read. The
encoding is small and fixed (OpenAI's 49,152-token BPE), so it is implemented here and
checked token for token against open_clip's in the tests.

The one deliberate difference: the literal strings "<start_of_text>" and
"<end_of_text>" in a note are text, not control tokens (a note cannot end itself early).
"""

from __future__ import annotations

import functools
import gzip
import html
import zlib
from dataclasses import dataclass
from pathlib import Path

import ftfy
import regex

from .bpe_source import VocabularyError, find_vocabulary

N_MERGES = 49152 - 256 - 2  # the merges CLIP was trained with (the file has more lines)
# words, single digits, runs of other symbols, and English contractions
_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def clean_text(text: str) -> str:
    """CLIP's text normalisation: fixed unicode, HTML entities resolved, single spaces,
    lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def byte_symbols() -> dict[int, str]:
    """Every byte as a printable character (GPT-2's table): printable Latin-1 bytes map to
    themselves, the others to code points from 256 on. The order (printable bytes first)
    is the order of the first 256 token ids."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@dataclass(frozen=True)
class BPEVocabulary:
    """Token ids, merge ranks and the byte table of one vocabulary file."""

    encoder: dict[str, int]
    decoder: dict[int, str]
    ranks: dict[tuple[str, str], int]
    byte_encoder: dict[int, str]
    byte_decoder: dict[str, int]

    @property
    def sot_id(self) -> int:
        return self.encoder["<start_of_text>"]

    @property
    def eot_id(self) -> int:
        return self.encoder["<end_of_text>"]


def load_vocabulary(path: str | Path | None = None) -> BPEVocabulary:
    """The vocabulary in `path` (gzip or plain text), else in the first place that has it."""
    return _parse(Path(path) if path is not None else find_vocabulary())


def read_merges(path: Path) -> list[tuple[str, str]]:
    """CLIP's merges from either form of the file: a header line, then one pair a line."""
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise VocabularyError(f"{path} cannot be read as CLIP's BPE vocabulary: {exc}") from exc
    merges = [tuple(line.split()) for line in text.split("\n")[1 : N_MERGES + 1]]
    if len(merges) < N_MERGES or any(len(m) != 2 for m in merges):
        raise VocabularyError(
            f"{path} is not CLIP's BPE vocabulary: CLIP's has {N_MERGES:,} merges, one pair of "
            "symbols a line after a header line; use bpe_simple_vocab_16e6.txt.gz or CLIP's merges.txt"
        )
    return merges


@functools.lru_cache(maxsize=4)
def _parse(path: Path) -> BPEVocabulary:
    """Parsed once per process and file: the tables are read-only after this."""
    merges = read_merges(path)
    byte_encoder = byte_symbols()
    symbols = list(byte_encoder.values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges),
             "<start_of_text>", "<end_of_text>"]
    encoder = {token: i for i, token in enumerate(vocab)}
    return BPEVocabulary(
        encoder=encoder,
        decoder={i: token for token, i in encoder.items()},
        ranks={pair: i for i, pair in enumerate(merges)},
        byte_encoder=byte_encoder,
        byte_decoder={s: b for b, s in byte_encoder.items()},
    )


class BPE:
    """Text (already cleaned) to CLIP token ids and back, with a per-word cache."""

    def __init__(self, vocabulary: BPEVocabulary | None = None):
        self.vocab = vocabulary or load_vocabulary()
        self._words: dict[str, tuple[int, ...]] = {}

    def _merge(self, word: str) -> list[str]:
        """Greedy merging of the lowest-ranked adjacent pair, as CLIP was trained."""
        parts = [*word[:-1], word[-1] + "</w>"]
        ranks = self.vocab.ranks
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: ranks.get(p, N_MERGES))
            if pair not in ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def word_ids(self, word: str) -> tuple[int, ...]:
        ids = self._words.get(word)
        if ids is None:
            symbols = "".join(self.vocab.byte_encoder[b] for b in word.encode("utf-8"))
            ids = tuple(self.vocab.encoder[p] for p in self._merge(symbols))
            if len(self._words) < 65536:
                self._words[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        return [i for word in _PATTERN.findall(text) for i in self.word_ids(word)]

    def decode(self, ids: list[int]) -> str:
        symbols = "".join(self.vocab.decoder[i] for i in ids)
        raw = bytearray(self.vocab.byte_decoder[s] for s in symbols)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")
