"""Image sizes from headers, before any decoding (issue 31): every format OpenCV writes, and the refusals."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from factory.errors import InputError
from factory.imagesize import ImageTooLarge, check_size, header_size
from tests.conftest import invoke
from tests.test_loop import _jpeg_bomb, _png_bomb


@pytest.mark.parametrize(
    "ext,fmt", [(".png", "png"), (".jpg", "jpeg"), (".bmp", "bmp"), (".webp", "webp"), (".tif", "tiff")]
)
def test_the_header_says_what_opencv_decodes(ext, fmt):
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8)
    data = cv2.imencode(ext, img)[1].tobytes()
    assert header_size(data) == (fmt, 53, 37)
    assert check_size(data) == (fmt, 53, 37)


def test_bombs_and_junk_are_refused_before_decoding():
    with pytest.raises(ImageTooLarge, match="20000 x 20000"):
        check_size(_png_bomb())
    with pytest.raises(ImageTooLarge):
        check_size(_jpeg_bomb())
    with pytest.raises(InputError, match="corrupt"):
        check_size(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(InputError, match="only JPEG, PNG"):
        check_size(cv2.imencode(".bmp", np.zeros((9, 9, 3), np.uint8))[1].tobytes(), formats=("jpeg", "png"))


def test_data_import_refuses_a_bomb_with_its_file_and_writes_nothing(tmp_path):
    tree = tmp_path / "tree"
    for cls in ("a", "b"):
        (tree / cls).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tree / cls / f"{i}.png"), np.full((20, 20, 3), 40 * i, np.uint8))
    (tree / "a" / "bomb.png").write_bytes(_png_bomb())
    result = invoke("data", "import", "imagefolder", str(tree), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "bomb.png" in result.output and "refused before decoding" in result.output
    assert not (tmp_path / "out").exists()
