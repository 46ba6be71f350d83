"""The CLI's user-error type, and SDK messages reworded for the command line."""

import re

# SDK keyword hints in error messages -> the CLI flags that set them.
_FLAG_TRUE = re.compile(r"\b(overwrite|skip_existing)=True\b")
_FLAG_NAME = re.compile(
    r"\b(label_field|run_key|eval_key|gt_field|classes_field)(=|(?=[\s,.;:)/]|$))"
)


class CliError(Exception):
    """A user error: printed as ``error: ...``, exit status 2."""


def cli_wording(message: str) -> str:
    """An SDK error message with its keyword hints spelled as CLI flags.

    ``"pass overwrite=True to replace it, or choose another label_field"``
    -> ``"pass --overwrite to replace it, or choose another --label-field"``.
    Only argument names the CLI exposes are rewritten; quoted values (field
    names such as ``'bifta_error'``) are left alone.
    """
    message = _FLAG_TRUE.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)
    return _FLAG_NAME.sub(
        lambda m: "--" + m.group(1).replace("_", "-") + (" " if m.group(2) else ""),
        message,
    )
