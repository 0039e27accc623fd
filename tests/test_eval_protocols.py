"""Sparse-view split protocols."""

import json

import pytest

from recon.errors import ReconError
from recon.eval.protocols import DTU_TEST_IDS, evenly_spaced, make_split


def test_llff_split_holds_out_every_8th_and_spaces_training_views():
    names = [f"image{i:03d}.png" for i in range(20)]
    s = make_split(names, "llff", 3)
    assert s.test == ["image000.png", "image008.png", "image016.png"]
    assert s.train == ["image001.png", "image010.png", "image019.png"]  # ends and middle of the rest
    assert not set(s.train) & set(s.test)


def test_dtu_split_uses_standard_ids():
    names = [f"{i:06d}_rgb.png" for i in range(49)]
    assert make_split(names, "dtu", 3).train == ["000025_rgb.png", "000022_rgb.png", "000028_rgb.png"]
    s6 = make_split(names, "dtu", 6)
    assert s6.train[3:] == ["000040_rgb.png", "000044_rgb.png", "000048_rgb.png"]
    assert s6.test == [names[i] for i in DTU_TEST_IDS] and len(s6.test) == 25


def test_even_split_and_file_override(tmp_path):
    names = [f"{c}.jpg" for c in "abcdefghijk"]
    s = make_split(names, "strecha", 3)
    assert s.train == ["a.jpg", "f.jpg", "k.jpg"] and len(s.test) == 8
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": ["b.jpg", "c.jpg"], "test": ["a.jpg"]}))
    assert make_split(names, "llff", 3, f).train == ["b.jpg", "c.jpg"]
    f.write_text(json.dumps({"train": ["zzz.jpg"], "test": []}))
    with pytest.raises(ReconError, match="zzz.jpg"):
        make_split(names, "llff", 3, f)
    with pytest.raises(ReconError):
        make_split(names, "llff", 1)


def test_evenly_spaced_keeps_all_when_few():
    assert evenly_spaced([1, 2], 5) == [1, 2]
    assert evenly_spaced(list(range(10)), 2) == [0, 9]
