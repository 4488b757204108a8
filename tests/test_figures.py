"""svlm_jax.figures: headless figures written atomically."""
import os

import pytest

from svlm_jax import figures


def test_save_writes_a_png_and_leaves_no_temp(tmp_path):
    fig, ax = figures.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    path = figures.save(fig, str(tmp_path / "line.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["line.png"]


def test_failed_save_leaves_nothing(tmp_path):
    fig, _ = figures.subplots()
    with pytest.raises(OSError):
        figures.save(fig, str(tmp_path / "missing_dir" / "x.png"))
    assert os.listdir(tmp_path) == []
