"""Sparse-view split protocols."""

import json

import pytest

from recon.errors import ReconError
from recon.eval.protocols import DTU_TEST_IDS, evenly_spaced, make_split, read_split_file


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


def test_split_file_with_an_image_in_train_and_test_is_an_error_naming_it(tmp_path):
    names = [f"{c}.jpg" for c in "abcdef"]
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": ["a.jpg", "c.jpg", "e.jpg"], "test": ["b.jpg", "c.jpg", "e.jpg"]}))
    with pytest.raises(ReconError, match=r"c\.jpg, e\.jpg both for training and for testing"):
        make_split(names, "llff", 3, f)
    with pytest.raises(ReconError, match=r"c\.jpg, e\.jpg"):
        read_split_file(f)  # checked without a scene, before a batch starts
    f.write_text(json.dumps({"train": ["a.jpg", "b.jpg", "a.jpg"], "test": ["c.jpg"]}))
    with pytest.raises(ReconError, match=r"a\.jpg more than once in 'train'"):
        read_split_file(f)


def test_empty_splits_are_errors_naming_the_images(tmp_path):
    names = ["a.png", "b.png", "c.png"]
    # the even protocol with as many views as images leaves nothing to test on
    with pytest.raises(ReconError, match=r"no test image \(training: a\.png, b\.png, c\.png\)"):
        make_split(names, "colmap", 3)
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": ["a.png", "b.png"], "test": []}))
    with pytest.raises(ReconError, match=r"no test image \(training: a\.png, b\.png\)"):
        make_split(names, "colmap", 3, f)
    with pytest.raises(ReconError, match="no test image"):
        read_split_file(f)
    f.write_text(json.dumps({"train": ["a.png"], "test": ["b.png"]}))
    with pytest.raises(ReconError, match=r"1 training image\(s\) \(a\.png\)"):
        read_split_file(f)
    f.write_text(json.dumps({"train": "a.png"}))
    with pytest.raises(ReconError, match="cannot read split file"):
        read_split_file(f)
    # a usable file passes through unchanged
    f.write_text(json.dumps({"train": ["c.png", "a.png"], "test": ["b.png"]}))
    assert read_split_file(f) == (["c.png", "a.png"], ["b.png"])
