"""Errors that the command line turns into one line on stderr and exit status 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: a name, a number or a file that can't be used.

    The command line prints ``bench: error: <message>`` on stderr and exits with status 2,
    before anything is written.
    """


class UnknownNameError(UsageError, KeyError):
    """A name that is not in a registry; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, choices: list[str]) -> None:
        self.kind, self.name, self.choices = kind, name, choices
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(choices)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BudgetViolation(RuntimeError):
    """An attack returned a point outside the eps-ball or outside [0, 1]: never counted."""
