"""The real CLIP BPE tokenizer, built offline from open_clip's bundled vocabulary.

open_clip ships ``bpe_simple_vocab_16e6.txt.gz`` (the merges CLIP was trained with). The
transformers ``CLIPTokenizer`` files (``vocab.json`` + ``merges.txt``, 49408 tokens) are a
deterministic function of it, so tests and the miniature models get the exact tokenizer of
Stable Diffusion's text encoder without a download.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

__all__ = ["write_clip_tokenizer_files", "build_clip_tokenizer"]

_N_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _bpe_path() -> Path:
    # Located without importing open_clip (whose import pulls in ftfy, timm, torchvision).
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("The CLIP vocabulary comes from open_clip: pip install open_clip_torch.")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer_files(directory: str | Path, model_max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and tokenizer configs for CLIP's BPE into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_bpe_path()).read().decode("utf-8").split("\n")[1 : _N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return directory


def build_clip_tokenizer(directory: str | Path, model_max_length: int = 77):
    """A transformers ``CLIPTokenizer`` equal to Stable Diffusion's, written to and loaded from ``directory``."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(directory, model_max_length)
    return CLIPTokenizer.from_pretrained(str(directory))
