"""One loader per data set, found from the working directory or $MITOSEG_SHARED_DATA; CI fails without data."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mitoseg import datasets
from mitoseg.errors import MitosegError


def test_drosophila_loader(droso):
    raw, mask = droso
    assert raw.shape == mask.shape == (20, 1024, 1024) and raw.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1} and 0.03 < mask.mean() < 0.07  # binarised at > 127


def test_data_is_found_by_environment_variable(droso_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MITOSEG_SHARED_DATA", str(droso_dir.parent))
    monkeypatch.chdir(tmp_path)  # not from the working directory
    assert datasets.shared_data() == droso_dir.parent and datasets.drosophila_dir() == droso_dir
    monkeypatch.setenv("MITOSEG_SHARED_DATA", str(tmp_path))
    with pytest.raises(MitosegError, match=r"Drosophila stack not found at .* \(set MITOSEG_SHARED_DATA"):
        datasets.drosophila_dir()


@pytest.mark.parametrize("required, code, word", [("1", 1, "error"), ("0", 0, "skipped")])
def test_missing_data_fails_in_ci_and_skips_elsewhere(tmp_path, required, code, word):
    env = dict(os.environ, MITOSEG_SHARED_DATA=str(tmp_path), MITOSEG_REQUIRE_DATA=required)
    tests = Path(__file__).parent
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"{tests / 'test_datasets.py'}::test_drosophila_loader"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == code, result.stdout[-2000:]
    assert f"1 {word}" in result.stdout
