"""servecmp's one exception hierarchy. The CLI turns every `ServecmpError` into one line and an
exit code; anything else is a bug and keeps its traceback.

    ServecmpError               one line, exit_code
    ├── UserError               bad input or an unusable environment (exit 2)
    │   └── MissingExtra        an optional dependency is not installed; names the pip extra
    ├── EndpointError           a request still failing after every retry (exit 3); `status`
    ├── RunFailed               a run stopped with its finished work saved (exit 3)
    └── RunInterrupted          Ctrl-C / SIGTERM with the finished work saved (exit 130)

Exit codes: 0 success; 1 a gate failed; 2 bad input; 3 an endpoint failed and the run is resumable;
4 no gate failed but one is inconclusive; 130 interrupted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 3
EXIT_INCONCLUSIVE = 4
EXIT_INTERRUPTED = 130


def one_line(message: object) -> str:
    """Multi-line causes (server logs, tracebacks) belong in files; the terminal gets one line."""
    return " ".join(str(message).split())


def first_error(exc: ValidationError) -> str:
    """A pydantic validation error in one phrase: the first failing field's dotted location and message."""
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


class ServecmpError(Exception):
    """Base of every error servecmp reports to a user as one line."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(one_line(message))
        if exit_code is not None:
            self.exit_code = exit_code


class UserError(ServecmpError):
    """Bad input or an unusable environment: something the user can fix (a URL, a file, a flag).

    Raise it wherever the cause is the user's to fix; let real bugs propagate as ordinary
    exceptions so they keep their traceback.
    """


class MissingExtra(UserError):
    """A feature needs an optional dependency that is not installed."""

    def __init__(self, feature: str, module: str, extra: str) -> None:
        super().__init__(f"{feature} needs the Python package '{module}': pip install 'servecmp[{extra}]'")
        self.module = module
        self.extra = extra


class EndpointError(ServecmpError):
    """A request that still failed after every retry. Carries a one-line reason and, when the
    server answered, its HTTP status (a 4xx is about this request, not the endpoint's health)."""

    exit_code = EXIT_RUN_FAILED

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def is_request_error(self) -> bool:
        # 400/413/422: this input was refused (e.g. a prompt longer than the model's context);
        # other items may well succeed. 401/403/404 are about the endpoint and stop the run.
        return self.status in (400, 413, 422)


class RunFailed(ServecmpError):
    """A run stopped early (an endpoint died); its finished work is saved and it can be resumed."""

    exit_code = EXIT_RUN_FAILED


class RunInterrupted(ServecmpError):
    """Ctrl-C or SIGTERM: the finished work is saved; the message says how to resume."""

    exit_code = EXIT_INTERRUPTED
