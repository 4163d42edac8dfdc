"""spamgpt.errors: what a user's mistake exits with."""

from spamgpt.errors import ParamsError, SpamGPTError


def test_a_params_error_is_a_spamgpt_error_that_exits_2() -> None:
    assert SpamGPTError("x").exit_code == 1
    assert ParamsError("x").exit_code == 2
    assert isinstance(ParamsError("x"), SpamGPTError)  # caught wherever a SpamGPTError is
