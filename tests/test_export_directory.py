"""Exports are written to a hidden staging directory and renamed into place."""

import pytest

import paddlenlp_ext
from paddlenlp_ext.export import ExportError, staged_directory


def test_complete_export_appears_under_its_name_only_at_the_end(tmp_path):
    target = tmp_path / "out"
    with staged_directory(target) as staging:
        (staging / "model.json").write_text("{}")
        assert not target.exists()
        assert staging.parent == tmp_path and staging.name.startswith(".out.partial-")
    assert (target / "model.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_export_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError, match="trace failed"):
        with staged_directory(tmp_path / "out") as staging:
            (staging / "model.json").write_text("half")
            raise RuntimeError("trace failed")
    assert list(tmp_path.iterdir()) == []


def test_exporting_twice_into_one_directory_is_an_error_unless_overwriting(tmp_path):
    target = tmp_path / "out"
    with staged_directory(target) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        with staged_directory(target):
            pass
    assert (target / "a").read_text() == "1"
    with staged_directory(target, overwrite=True) as staging:
        (staging / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_empty_existing_directory_is_used(tmp_path):
    (tmp_path / "out").mkdir()
    with staged_directory(tmp_path / "out") as staging:
        (staging / "a").write_text("1")
    assert (tmp_path / "out" / "a").exists()


def test_a_file_in_the_way_is_an_error(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ExportError, match="exists and is not a directory"):
        with staged_directory(tmp_path / "out"):
            pass


def test_enable_and_disable_are_on_the_package():
    assert paddlenlp_ext.enable is paddlenlp_ext.hook.enable
    assert paddlenlp_ext.disable is paddlenlp_ext.hook.disable


def test_two_exports_racing_for_one_new_directory_keep_the_first(tmp_path):
    """Both start while the directory does not exist; the one that finishes second is
    refused, names the flag that would replace it, and leaves the first's files."""
    from paddlenlp_ext.export import DirectoryExistsError

    target = tmp_path / "out"
    with pytest.raises(DirectoryExistsError) as refused:
        with staged_directory(target) as second:
            (second / "model.json").write_text("second")
            with staged_directory(target) as first:
                (first / "model.json").write_text("first")
    assert (target / "model.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the second's staging is gone
    assert refused.value.message("--overwrite") == (
        f"{target} already exists and is not empty (another export wrote it meanwhile): choose a new directory "
        "or use --overwrite")


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_a_ctrl_c_a_library_swallowed_still_stops_the_commit(tmp_path, kind):
    """Paddle's dy2static catches everything (``except:``) while it traces; a Ctrl-C that
    lands there must still keep the export, or the output file, out of place."""
    import signal

    from paddlenlp_ext.files import write_atomically
    from paddlenlp_ext.interrupts import recording_interrupts

    def swallowed_ctrl_c():
        try:
            signal.raise_signal(signal.SIGINT)
        except:  # noqa: E722 (what the library does)
            pass

    target = tmp_path / "out"
    handler = signal.getsignal(signal.SIGINT)  # pytest-xdist's workers ignore SIGINT
    with pytest.raises(KeyboardInterrupt), recording_interrupts():
        if kind == "directory":
            with staged_directory(target) as staging:
                (staging / "model.json").write_text("{}")
                swallowed_ctrl_c()
        else:
            write_atomically(target, lambda path: (open(path, "w").write("{}"), swallowed_ctrl_c()))
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is handler


def test_an_error_a_library_made_of_a_ctrl_c_is_the_interrupt():
    """Paddle turns a KeyboardInterrupt that lands in its call-stack lookup into
    "RuntimeError: Failed to get callstack object" (save_inference_model, seen in a
    Ctrl-C test of convert); an error after a SIGINT is the interrupt. An error with no
    SIGINT before it stays itself."""
    import signal

    from paddlenlp_ext.interrupts import recording_interrupts

    def converted_ctrl_c():
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise RuntimeError("Failed to get callstack object") from None

    with pytest.raises(KeyboardInterrupt), recording_interrupts():
        converted_ctrl_c()
    with pytest.raises(RuntimeError), recording_interrupts():
        raise RuntimeError("no Ctrl-C here")
