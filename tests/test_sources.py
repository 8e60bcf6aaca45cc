"""mzsr.data.sources: what a config's image source names, resolved and checked before anything is
downloaded or written (scripts/images.py writes the result)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from mzsr import MZSRError
from mzsr.data.download import DIV2K_URLS
from mzsr.data.sources import resolve_source, skimage_names, skimage_photos
from script_runner import run_script


def test_div2k_archives_resolve_to_their_url_and_image_count():
    assert resolve_source("div2k:valid_hr") == (DIV2K_URLS["valid_hr"], 100)
    assert resolve_source("div2k:train_hr", 5) == (DIV2K_URLS["train_hr"], 5)  # a configured count wins
    with pytest.raises(
        MZSRError, match=r"^div2k:test_hr: unknown DIV2K archive; known: div2k:train_hr, div2k:valid_hr$"
    ):
        resolve_source("div2k:test_hr")


@pytest.mark.parametrize("source", ["https://example.org/a.zip", "data/a.zip", "data/hr"])
def test_other_sources_pass_as_they_are(source):
    assert resolve_source(source) == (source, None)
    assert resolve_source(source, 7) == (source, 7)


def test_skimage_names():
    assert skimage_names("skimage:coffee, rocket,,") == ["coffee", "rocket"]
    for source in ("skimage:", "skimage: , ", "coffee"):
        with pytest.raises(MZSRError, match=rf"^{source}: name at least one scikit-image photo"):
            skimage_names(source)


def test_skimage_photos_by_name_each_checked():
    photos = skimage_photos("skimage:chelsea,astronaut")
    assert list(photos) == ["chelsea", "astronaut"]
    np.testing.assert_array_equal(photos["astronaut"], skimage.data.astronaut())
    # a grey photo, a helper, a download of everything, a typo: each stops the lot, by name
    for bad in ("camera", "file_hash", "download_all", "astronot"):
        with pytest.raises(MZSRError, match=rf"^skimage:{bad}: not one of scikit-image's bundled RGB photos"):
            skimage_photos(f"skimage:chelsea,{bad},astronaut")


def test_images_script_writes_nothing_for_a_bad_name(monkeypatch, tmp_path):
    out = tmp_path / "train"
    with pytest.raises(MZSRError, match="^skimage:nope: "):
        run_script(
            monkeypatch,
            "images",
            input={},
            output={"folder": str(out)},
            params={"data": {"source": "skimage:astronaut,nope"}},
            log=tmp_path / "job.log",
        )
    assert list(tmp_path.iterdir()) == [tmp_path / "job.log"]
