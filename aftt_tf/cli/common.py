"""What every binary does with errors: a bad input is a one-line usage error (exit 2)
before any work; a failure while working (a full disk, a diverged run) is a one-line
error (exit 1). Neither prints a traceback."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from absl import app, flags

from aftt_tf.io_utils import OutputError

USAGE_EXIT = 2
FAILURE_EXIT = 1
FLAGS = flags.FLAGS
T = TypeVar("T")
_REMEDIES = {
    errno.ENOSPC: "free space there or choose another --out; finished work is kept and resumes",
    errno.EROFS: "the file system is read-only; choose another --out",
    errno.EACCES: "no permission; choose another --out or fix the permissions",
    errno.EPERM: "no permission; choose another --out or fix the permissions",
    errno.ENOTDIR: "a path component is a file, not a directory; choose another --out",
    errno.EISDIR: "a directory stands where a file was expected",
}


def from_flags(config_class: Callable[..., T], names: str, /, **values: Any) -> T:
    """`config_class(...)` with each field in `names` (space-separated) taken from the flag
    of the same name (a list flag as a tuple) and the others from `values`: a binary maps
    its flags to its config in one line, and a flag missing from the binary fails loudly."""
    taken = {}
    for name in names.split():
        value = FLAGS[name].value
        taken[name] = tuple(value) if isinstance(value, list) else value
    return config_class(**taken, **values)


def numbers(name: str, kind: type = float) -> tuple:
    """The list flag `name` as a tuple of `kind` (float or int); a usage error naming the
    flag when a value is no such number."""
    try:
        return tuple(kind(value) for value in FLAGS[name].value)
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise usage_error(
            f"--{name} must be comma-separated {noun}, received {FLAGS[name].value}."
        ) from None


def check_arguments(argv: list[str], *required: str) -> None:
    """A usage error for positional arguments, or when a required flag is empty."""
    if len(argv) > 1:
        raise usage_error(f"Unexpected arguments: {argv[1:]}")
    if not all(FLAGS[name].value for name in required):
        names = " and ".join(f"--{name}" for name in required)
        raise usage_error(f"{names} {'are' if len(required) > 1 else 'is'} required.")


def usage_error(message: str) -> app.UsageError:
    """An absl usage error that exits with status 2."""
    return app.UsageError(message, exitcode=USAGE_EXIT)


@contextlib.contextmanager
def usage_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turns bad inputs found while checking (values, files, outputs) into usage errors."""
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError, OutputError, *extra) as error:
        raise usage_error(str(error)) from None
    except OSError as error:
        raise usage_error(describe_os_error(error)) from None


@contextlib.contextmanager
def refusals(*types: type[BaseException]) -> Iterator[None]:
    """While working, turns only these refusals (a busy output, a fault that cannot be
    placed) into usage errors; every other failure is a runtime failure (exit 1)."""
    try:
        yield
    except types as error:
        raise usage_error(str(error)) from None


def describe_os_error(error: OSError) -> str:
    """'PATH: reason (remedy)' for a file-system error."""
    where = error.filename or "a file"
    remedy = _REMEDIES.get(error.errno, "")
    return f"{where}: {error.strerror or error}" + (f" ({remedy})." if remedy else ".")


def run(main: Callable[[list[str]], None], program: str, modules: tuple[str, ...] = ()) -> None:
    """`app.run(main)`, with failures while working reported on one line, exit status 1,
    and `--help` listing the flags the binary's own `modules` define."""
    if any(arg in ("--help", "-h", "--helpshort", "-?") for arg in sys.argv[1:]):
        _print_help(program, modules)
    quiet_tensorflow()

    def guarded(argv: list[str]) -> None:
        _plain_log_lines()
        try:
            main(argv)
        except app.UsageError:
            raise
        except OSError as error:
            _fail(program, describe_os_error(error))
        except (RuntimeError, ValueError) as error:
            _fail(program, str(error))
        except Exception as error:
            message = _tensorflow_error(error)
            if message is None:
                raise
            _fail(program, message)

    app.run(guarded, flags_parser=_parse_flags)


# Lines TensorFlow and LiteRT print from C++ on every run, whatever TF_CPP_MIN_LOG_LEVEL
# says (absl writes them before its logging is initialised): noise, not information.
_NATIVE_NOISE = re.compile(
    rb"^(?:WARNING: All log messages before absl::InitializeLog|"
    rb"[IWE]\d{4} [\d:. ]+\d+ (?:port|cudart_stub|cuda_platform|cuda_executor|cpu_feature_guard)"
    rb"\.cc|INFO: Created TensorFlow Lite XNNPACK delegate)"
)


def quiet_tensorflow() -> None:
    """TensorFlow's own C++ log (oneDNN notices, 'failed call to cuInit' on every machine
    without a GPU) off unless the user asked for it with TF_CPP_MIN_LOG_LEVEL; errors
    still reach the user as exceptions, one line each."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return  # The user chose what to see.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    _filter_native_noise()


def _filter_native_noise() -> None:
    """Standard error (file descriptor 2) through a filter that drops `_NATIVE_NOISE`
    lines and passes everything else on. The filter is a child process reading a pipe:
    it drains every line written before the binary ends, even when a native abort kills
    the binary (a filter thread would die with it and lose the last lines)."""
    reader, writer = os.pipe()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:  # The filter: reads until every writer (the binary, its children) is gone.
        os.close(writer)
        try:
            with os.fdopen(reader, "rb") as stream:
                for line in stream:
                    if not _NATIVE_NOISE.match(line):
                        os.write(2, line)
        finally:
            os._exit(0)
    os.close(reader)
    os.dup2(writer, 2)
    os.close(writer)


def _plain_log_lines() -> None:
    """Log lines as 'LEVEL: message', without absl's thread and file prefix."""
    import logging

    from absl import logging as absl_logging

    absl_logging.get_absl_handler().setFormatter(logging.Formatter("%(levelname)s: %(message)s"))


def _tensorflow_error(error: Exception) -> str | None:
    """One line for a TensorFlow runtime error (a full disk while writing a SavedModel
    raises ResourceExhaustedError, not OSError); None for anything else."""
    if not type(error).__module__.startswith("tensorflow"):
        return None
    text = (getattr(error, "message", None) or str(error)).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if "No space left" in text or "ResourceExhausted" in type(error).__name__:
        return (
            f"{first} (out of disk space or memory while writing; free space or choose "
            "another --out; nothing was written into --out)."
        )
    return f"{type(error).__name__}: {first}"


def _print_help(program: str, modules: tuple[str, ...]) -> None:
    main = sys.modules.get(modules[0]) if modules else None
    sys.stdout.write(f"{((main and main.__doc__) or program).strip()}\n\nFlags:\n")
    for module in modules:
        sys.stdout.write(flags.FLAGS.module_help(module) + "\n")
    sys.stdout.write("\nEvery absl flag: --helpfull.\n")
    sys.exit(0)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag a usage error (exit 2) like every other."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.stderr.write(
            f"FATAL Flags parsing error: {error}\n"
            "Pass --helpshort or --helpfull to see help on flags.\n"
        )
        sys.exit(USAGE_EXIT)


def _fail(program: str, message: str) -> None:
    sys.stderr.write(f"{program}: error: {message}\n")
    sys.stderr.flush()
    sys.exit(FAILURE_EXIT)
