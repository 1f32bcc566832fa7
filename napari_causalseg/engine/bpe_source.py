"""Where CLIP's BPE vocabulary file comes from.

The package does not ship OpenAI's vocabulary (third-party data), and it does not
require open_clip for it either: open_clip brings torchvision, which pins the user's
torch build. The file is looked for, in this order:

1. ``NAPARI_CAUSALSEG_BPE_VOCAB``: a path to ``bpe_simple_vocab_16e6.txt.gz`` or to a
   ``merges.txt`` (the same merges as plain text, as the Hugging Face Hub serves them);
2. open_clip's package, found without importing it (``pip install --no-deps
   open_clip_torch`` is enough: the file is all that is read);
3. the OpenAI CLIP tokenizer's ``merges.txt`` on the Hugging Face Hub, from
   huggingface_hub's cache, else downloaded once (like OpenAI's weights).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ENV_VAR = "NAPARI_CAUSALSEG_BPE_VOCAB"
OPEN_CLIP_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: Any OpenAI CLIP tokenizer on the Hub has the same 48,894 merges; this one is the most used.
HUB_REPO, HUB_FILE = "openai/clip-vit-base-patch32", "merges.txt"


class VocabularyError(ValueError):
    """CLIP's BPE vocabulary is missing or not what it claims to be."""


def find_vocabulary(allow_download: bool = True) -> Path:
    """The vocabulary file, from the first of the three places that has it."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise VocabularyError(f"{ENV_VAR} names {path}, which is not a file; point it at "
                                  f"{OPEN_CLIP_FILE} or a CLIP merges.txt, or unset it")
        return path
    path = open_clip_vocabulary()
    if path is not None:
        return path
    path, hub_problem = hub_vocabulary(allow_download)
    if path is not None:
        return path
    raise VocabularyError(
        "CLIP's BPE vocabulary was not found. It is not shipped with napari-causalseg; any one "
        f"of these provides it: `pip install --no-deps open_clip_torch` (the file only, torch "
        f"stays as it is); or set {ENV_VAR} to a copy of {OPEN_CLIP_FILE} or of CLIP's "
        f"merges.txt; or let huggingface_hub download {HUB_REPO}/{HUB_FILE} once "
        f"(needs the internet once; {hub_problem})."
    )


def open_clip_vocabulary() -> Path | None:
    """The file inside an installed open_clip package, or None; open_clip is not imported
    (its `__init__` imports torchvision)."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / OPEN_CLIP_FILE
        if path.is_file():
            return path
    return None


def hub_vocabulary(allow_download: bool) -> tuple[Path | None, str]:
    """(path, None) from the Hub's cache or a download, else (None, why not)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None, "huggingface_hub is not installed"
    try:
        return Path(hf_hub_download(HUB_REPO, HUB_FILE, local_files_only=True)), ""
    except Exception as exc:  # noqa: BLE001 - not cached: the hub raises several types
        why = f"not in the Hugging Face cache ({type(exc).__name__})"
    if not allow_download:
        return None, why
    try:
        return Path(hf_hub_download(HUB_REPO, HUB_FILE)), ""
    except Exception as exc:  # noqa: BLE001 - network and hub errors come in many types
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"the download failed: {type(exc).__name__}: {first}"
