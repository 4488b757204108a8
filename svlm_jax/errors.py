"""What goes wrong because of the user's input, one exception type per domain, and the CLI boundary.

Every error a user can fix is one of these types, each a `ValueError` (so API callers that catch
ValueError keep working) and an `SvlmError` (so a CLI can tell them from its own bugs):

    VideoError       a video source cannot be opened, decoded or understood
    CheckpointError  a checkpoint (model, tokenizer, training step) is missing, damaged or does not fit
    DataError        an annotation file or dataset cannot be read
    ConfigError      flags or config values that cannot work together (or do not fit the device)
    StreamInputError one stream's input (a second, its frames, a question) does not fit the stream; it names
                     the stream, so a batch can end that stream alone

`cli_main` runs a CLI body and turns these into one line on stderr and exit code 2; anything else
(an internal bug) keeps its traceback, and `exit_cli` ends a CLI process with that code. `user_input`
names a library's own ValueError/OSError as one of the four types where it can only come from the
user's input; `need_file` and `need_dir` check an input path flag. `check_output` refuses an output
path that would write over, or inside, one of the command's inputs.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import warnings
from typing import Callable, Iterable, Iterator, NoReturn

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class SvlmError(Exception):
    """A problem with the user's input; its message is one sentence naming the input and what to do."""


class VideoError(SvlmError, ValueError):
    """A video source could not be opened, decoded or understood."""


class CheckpointError(SvlmError, ValueError):
    """A checkpoint directory, one of its files, or a training checkpoint is missing, damaged or mismatched."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No checkpoint where one was asked for."""


class DataError(SvlmError, ValueError):
    """An annotation file or dataset cannot be read."""


class DataNotFound(DataError, FileNotFoundError):
    """An input data file does not exist."""


class ConfigError(SvlmError, ValueError):
    """Settings that cannot work: a bad flag value, a config that does not fit the data or the device."""


class StreamInputError(SvlmError, ValueError):
    """One stream's input (a second, its frames or time stamps, a question) does not fit that stream.

    `stream` is the stream's index in its batch (None when not known), so a batched caller can end that
    stream alone and go on with the others.
    """

    def __init__(self, message: str, stream: int | None = None):
        super().__init__(message)
        self.stream = stream


def one_line(e: BaseException) -> str:
    """The message of `e` on one line (KeyError's quotes dropped, newlines folded)."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(msg.split()) or type(e).__name__


def silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def cli_main(body: Callable[[], int], prog: str, *, catch: tuple[type[BaseException], ...] = (),
             interrupted: str = "interrupted.") -> int:
    """Run a CLI `body` and return its exit code; user errors become one line on stderr and code 2.

    SvlmError (and the extra exception types in `catch`, for libraries that report bad input their
    own way) print `<prog>: error: <message>`; warnings print as `<prog>: warning: <message>`; a closed
    stdout (`| head`) stops quietly with code 0; Ctrl-C prints `<prog>: <interrupted>` (say there what was
    kept and how to resume) and gives 130. Anything else propagates with its traceback: it is a bug, not
    bad input. A `__main__` passes the code to `exit_cli`.
    """
    try:
        with print_warnings(prog):
            return body()
    except (SvlmError, *catch) as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        silence_stdout()
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def exit_cli(code: int) -> NoReturn:
    """End a CLI process with `code` (what `cli_main` returned); every `python -m` entry point ends here.

    After an interrupt (130) the output is flushed and the interpreter's teardown is skipped: the
    interrupt may have come while XLA was compiling or running, and tearing down the interpreter under
    XLA's threads can segfault. Whatever must survive (a checkpoint, a flushed log) is written before
    `main` returns, so nothing that teardown would do is lost.
    """
    if code == EXIT_INTERRUPTED:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


@contextlib.contextmanager
def user_input(error: type[SvlmError], *, types: tuple[type[BaseException], ...] = (ValueError, OSError)
               ) -> Iterator[None]:
    """Within the block, an exception of `types` becomes `error` with the same one-line message.

    For library calls that report the user's bad input as a plain ValueError or OSError (config
    dataclasses, readers): only wrap code whose such errors can only come from the input.
    """
    try:
        yield
    except SvlmError:
        raise
    except types as e:
        raise error(one_line(e)) from e


def need_file(path: str | os.PathLike | None, flag: str, what: str) -> None:
    """Refuse (DataNotFound) a `flag` whose file does not exist; `what` says what to pass instead. None: unset."""
    if path is not None and not os.path.isfile(path):
        raise DataNotFound(f"{flag} {os.fspath(path)!r} does not exist or is not a file; pass {what}.")


def need_dir(path: str | os.PathLike | None, flag: str, what: str) -> None:
    """Refuse (DataNotFound) a `flag` whose directory does not exist; `what` says what to pass instead."""
    if path is not None and not os.path.isdir(path):
        raise DataNotFound(f"{flag} {os.fspath(path)!r} does not exist or is not a directory; pass {what}.")


@contextlib.contextmanager
def print_warnings(prog: str) -> Iterator[None]:
    """Within the block, print each warning as one line `<prog>: warning: <message>` on stderr ('' : no prog)."""
    head = f"{prog}: warning: " if prog else "warning: "

    def show(message, category, filename, lineno, file=None, line=None):
        print(head + (one_line(message) if isinstance(message, BaseException) else " ".join(str(message).split())),
              file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)  # ours name a file or a tensor: each one matters
        warnings.showwarning = show
        yield


def _resolved(path: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(os.path.realpath(os.fspath(path)))


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and bind mounts too
    except OSError:
        return a == b


def check_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *, what: str = "output",
                 replaces: bool = False) -> None:
    """Refuse (ConfigError) an output path that is one of the inputs, lies inside one, or (when the output
    directory gets replaced as a whole, `replaces`) contains one.

    Paths are compared after resolving symlinks, so a link to the input is caught too. None inputs are skipped.
    """
    out = _resolved(output)
    for given in inputs:
        if given is None:
            continue
        src = _resolved(given)
        if _same_file(out, src):
            raise ConfigError(f"The {what} {os.fspath(output)!r} is the input {os.fspath(given)!r}; writing it would "
                              f"destroy the input, so choose another path.")
        if src in out.parents:
            raise ConfigError(f"The {what} {os.fspath(output)!r} lies inside the input {os.fspath(given)!r}; choose a "
                              f"path outside it so the input stays as it is.")
        if replaces and out in src.parents:
            raise ConfigError(f"The {what} {os.fspath(output)!r} contains the input {os.fspath(given)!r} and would be "
                              f"replaced; choose another path.")
