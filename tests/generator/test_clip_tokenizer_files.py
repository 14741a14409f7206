from __future__ import annotations

import gzip
import json
import zipfile

import pytest

from generator.clip_tokenizer_files import (
    BPE_MEMBER,
    END,
    START,
    build,
    bytes_to_unicode,
    download_wheel,
)
from tests.conftest import TOKENIZER_DIR, require_shared

TOY_BPE = "\n".join(
    ["bpe_simple_vocab_16e6.txt#version: 0.2", "i n", "t h", "th e</w>"]
)


def toy_wheel(path, bpe_text: str = TOY_BPE):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(BPE_MEMBER, gzip.compress(bpe_text.encode("utf-8")))
    return path


def test_it_maps_every_byte_to_its_own_printable_character():
    table = bytes_to_unicode()

    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord("a")] == "a"
    assert table[ord(" ")] == "Ġ"


def test_it_orders_the_vocab_as_clips_simple_tokenizer(tmp_path):
    out = build(tmp_path / "tok", wheel=toy_wheel(tmp_path / "toy.whl"))
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))

    assert vocab["!"] == 0
    assert vocab["!</w>"] == 256
    assert [vocab["in"], vocab["th"], vocab["the</w>"]] == [512, 513, 514]
    assert [vocab[START], vocab[END]] == [515, 516]
    assert len(vocab) == 517


def test_it_writes_merges_under_the_version_header(tmp_path):
    out = build(tmp_path / "tok", wheel=toy_wheel(tmp_path / "toy.whl"))

    lines = (out / "merges.txt").read_text(encoding="utf-8").splitlines()

    assert lines == ["#version: 0.2", "i n", "t h", "th e</w>"]


def test_it_refuses_a_wheel_without_the_bpe_file_naming_it(tmp_path):
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("other/__init__.py", "")

    with pytest.raises(ValueError, match=f"{wheel} holds no {BPE_MEMBER}"):
        build(tmp_path / "tok", wheel=wheel)


@pytest.mark.slow
@pytest.mark.needs_shared
def test_it_rebuilds_the_shared_tokenizer_from_the_open_clip_wheel(tmp_path):
    shared = require_shared(TOKENIZER_DIR / "vocab.json").parent
    try:
        wheel = download_wheel(tmp_path / "wheel")
    except RuntimeError as exc:
        pytest.skip(f"open-clip-torch wheel not reachable: {exc}")

    out = build(tmp_path / "tok", wheel=wheel)

    built = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    expected = json.loads((shared / "vocab.json").read_text(encoding="utf-8"))
    assert built == expected
    assert len(built) == 49408
    assert (out / "merges.txt").read_text(encoding="utf-8").splitlines() == (
        (shared / "merges.txt").read_text(encoding="utf-8").splitlines()
    )


def test_it_builds_a_folder_clip_tokenizer_loads(tmp_path):
    from transformers import CLIPTokenizer

    out = build(tmp_path / "tok", wheel=toy_wheel(tmp_path / "toy.whl"))

    tokenizer = CLIPTokenizer.from_pretrained(str(out))

    assert tokenizer.convert_tokens_to_ids("the</w>") == 514
    assert tokenizer.bos_token == START
