"""write_atomically: complete files only, with the usual permissions."""

import os

import pytest

from paddlenlp_ext.files import write_atomically


def test_written_file_appears_whole_with_umask_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        write_atomically(tmp_path / "out.json", lambda partial: open(partial, "w").write("{}"))
    finally:
        os.umask(mask)
    assert (tmp_path / "out.json").read_text() == "{}"
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_leaves_nothing(tmp_path):
    def write(partial):
        open(partial, "w").write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_atomically(tmp_path / "out.json", write)
    assert list(tmp_path.iterdir()) == []
