"""File modes: 0666 / 0777 less the umask, read without changing it."""

import os

import pytest

from rusteeze.file_modes import dir_mode, file_mode, umask


@pytest.mark.parametrize(
    ("mask", "file", "folder"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)]
)
def test_modes_follow_the_umask_and_leave_it_as_it_was(mask, file, folder):
    before = os.umask(mask)
    try:
        assert (umask(), file_mode(), dir_mode()) == (mask, file, folder)
        assert os.umask(mask) == mask  # still set after being read
    finally:
        os.umask(before)
