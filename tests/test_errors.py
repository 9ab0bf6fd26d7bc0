"""error_line: the line of an exception a user is shown."""

from paddlenlp_ext.errors import error_line


def test_paddle_program_errors_show_the_named_error_not_the_preamble():
    error = RuntimeError("In user code:\n\n    File x.py, line 3\n    UnavailableError: model file is damaged.\n  [Hint]")
    assert error_line(error) == "UnavailableError: model file is damaged."


def test_plain_messages_show_their_first_line_and_empty_ones_their_type():
    assert error_line(ValueError("bad vocab file\nmore detail")) == "bad vocab file"
    assert error_line(OSError()) == "OSError"
