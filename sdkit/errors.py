"""The two kinds of failure sdkit reports.

A `UserError` is bad input the user can fix: the CLI prints its one-line message and exits 2, without a traceback,
having written nothing. An `SdkitError` is a failure that is not the input's fault but is still understood (a NaN image,
an interrupted run): one line, exit 1. Anything else is a bug: exit 1 with a pointer to `SDKIT_DEBUG=1`.
"""

from __future__ import annotations


class SdkitError(Exception):
    """A failure sdkit understands and reports in one line (exit code 1)."""

    exit_code = 1


class UserError(SdkitError):
    """Bad input: the message names the problem and the fix (exit code 2)."""

    exit_code = 2
