"""Build SD v1.x's CLIP tokenizer files (vocab.json, merges.txt) without the Hub.

The BPE table that OpenAI's CLIP and SD v1.x use ships inside the open-clip-torch
wheel as ``open_clip/bpe_simple_vocab_16e6.txt.gz``. This module rebuilds the Hugging
Face files from it exactly as CLIP's ``SimpleTokenizer`` builds its vocabulary: the
256 byte characters, the same with ``</w>``, one token per merge, then the two
specials, 49,408 tokens in all.

    python -m generator.clip_tokenizer_files OUT [--wheel PATH]

Without ``--wheel`` it fetches ``open-clip-torch==3.3.0`` with ``pip download``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OPEN_CLIP_REQUIREMENT = "open-clip-torch==3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 lines after the header: with 512 byte tokens
# and 2 specials the vocabulary is 49,408 tokens.
MERGE_COUNT = 49152 - 256 - 2
START, END = "<|startoftext|>", "<|endoftext|>"
MERGES_HEADER = "#version: 0.2"
TOKENIZER_CONFIG = {
    "tokenizer_class": "CLIPTokenizer",
    "model_max_length": 77,
    "do_lower_case": True,
    "errors": "replace",
    "add_prefix_space": False,
    "bos_token": START,
    "eos_token": END,
    "unk_token": END,
    "pad_token": END,
}
NO_BPE_IN_WHEEL = "{wheel} holds no {member}: is it an open-clip-torch wheel?"
DOWNLOAD_FAILED = "pip download {requirement} failed (exit {code}): {detail}"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from the 256 byte values to printable characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def merges_from_bpe(text: str) -> list[tuple[str, str]]:
    """The merge pairs CLIP uses: lines 1 to 48,894 of the BPE file, header skipped."""
    lines = text.split("\n")[1 : MERGE_COUNT + 1]
    return [tuple(line.split()) for line in lines]  # type: ignore[misc]


def vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token to id in SimpleTokenizer's order: bytes, bytes+</w>, merges, specials."""
    byte_tokens = list(bytes_to_unicode().values())
    tokens = [
        *byte_tokens,
        *(token + "</w>" for token in byte_tokens),
        *("".join(pair) for pair in merges),
        START,
        END,
    ]
    return {token: index for index, token in enumerate(tokens)}


def read_bpe_from_wheel(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        if BPE_MEMBER not in archive.namelist():
            raise ValueError(NO_BPE_IN_WHEEL.format(wheel=wheel, member=BPE_MEMBER))
        return gzip.decompress(archive.read(BPE_MEMBER)).decode("utf-8")


def download_wheel(folder: Path, requirement: str = OPEN_CLIP_REQUIREMENT) -> Path:
    """Fetch the wheel alone (no dependencies) with pip; raise naming what failed."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q"]
    done = subprocess.run(
        [*command, "--only-binary=:all:", requirement, "-d", str(folder)],
        capture_output=True,
        text=True,
    )
    wheels = sorted(folder.glob("open_clip_torch-*.whl"))
    if done.returncode or not wheels:
        detail = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise RuntimeError(
            DOWNLOAD_FAILED.format(
                requirement=requirement, code=done.returncode, detail=detail
            )
        )
    return wheels[0]


def write_tokenizer_files(bpe_text: str, out: Path) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs CLIPTokenizer reads."""
    merges = merges_from_bpe(bpe_text)
    out.mkdir(parents=True, exist_ok=True)
    vocab = vocab_from_merges(merges)
    (out / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, sort_keys=True), encoding="utf-8"
    )
    lines = [MERGES_HEADER, *(" ".join(pair) for pair in merges)]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    return out


def build(out: Path, wheel: Path | None = None) -> Path:
    """Build the tokenizer folder at ``out`` from ``wheel`` or a fresh download."""
    if wheel is not None:
        return write_tokenizer_files(read_bpe_from_wheel(wheel), out)
    with tempfile.TemporaryDirectory() as folder:
        bpe_text = read_bpe_from_wheel(download_wheel(Path(folder)))
    return write_tokenizer_files(bpe_text, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the tokenizer into")
    parser.add_argument("--wheel", type=Path, help="an open-clip-torch wheel on disk")
    args = parser.parse_args()
    print(f"CLIP tokenizer written to {build(args.out, args.wheel)}")


if __name__ == "__main__":
    main()
