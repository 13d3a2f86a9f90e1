"""How every script in ``scripts/`` parses its flags and ends on bad input: one ``error:`` line.

``run(main)`` replaces ``absl.app.run(main)``: ``parse_flags`` turns a flag error (a missing
required flag, a mistyped value, an unknown flag, a missing or failing ``--config`` file, an
unknown or mistyped ``--config.<field>``) and a stray positional argument into one ``error:``
line instead of absl's two-line ``FATAL Flags parsing error`` or a traceback; ``main`` runs
inside ``one_line_errors``, so its expected failures (``OSError``, ``ValueError``, which covers
``ConfigError``, ``DatasetError`` and ``SourceError``, ``ImportError``, a NaN/Inf loss) end the
same way, and a preempted run exits with status 143. ``fail`` and ``reject_flags`` report usage
mistakes the flags themselves cannot express (flags that go together or exclude each other), and
``reject_unread_overrides`` the ``--config.<field>`` overrides of fields a script never reads.

Only ``scripts/`` import this module; nothing in the package does.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import sys
from typing import Any, Callable, Iterable, Iterator, Mapping, NoReturn

import ml_collections
from absl import app, flags

FAILURES = (OSError, ValueError, ImportError)  # and training.loop.NonFiniteLossError


def fail(message: str) -> NoReturn:
    """Ends the script with ``error: <message>`` (exit status 1)."""
    sys.exit(f"error: {message}")


def _config():
    """``predvdm_jax.config``, imported when first needed (a ``--config`` flag, or a failure):
    it imports JAX, which the scripts that need no config (the data scripts) do not load."""
    from predvdm_jax import config

    return config


def _run_failures() -> tuple[type[BaseException], type[BaseException]] | None:
    """``training.loop``'s ``NonFiniteLossError`` and ``TrainingPreempted``, or None when no
    module of this process imported the training loop (so neither can have been raised):
    importing it would cost every other script a second at start-up."""
    loop = sys.modules.get("predvdm_jax.training.loop")
    return None if loop is None else (loop.NonFiniteLossError, loop.TrainingPreempted)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Expected failures (``FAILURES``, and a NaN/Inf training loss) exit with one ``error:``
    line (status 1); a preempted run prints ``preempted:`` and exits with
    ``TrainingPreempted.exit_code`` (143), so the same command resumes; a Ctrl-C that reaches
    here (training saves first: ``training/preemption.py``) prints one line and exits 130."""
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    except FAILURES as err:
        fail(str(err))
    except Exception as err:
        run_failures = _run_failures()
        if run_failures is None:
            raise
        non_finite, preempted = run_failures
        if isinstance(err, non_finite):
            fail(str(err))
        if isinstance(err, preempted):
            print(f"preempted: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
        raise


def _refuse_ignored(given: list[str], why: str) -> None:
    """One ``error:`` line naming the command-line settings ``given`` (none: nothing happens),
    which would do nothing; ``why`` follows "no effect" (with its leading space or colon)."""
    if given:
        verb, pronoun = ("has", "it") if len(given) == 1 else ("have", "them")
        fail(f"{', '.join(given)} {verb} no effect{why}; remove {pronoun}")


def reject_flags(names: Iterable[str], reason: str) -> None:
    """One ``error:`` line if any flag of ``names`` was given on the command line, where it
    would do nothing (``reason``: e.g. ``"with --video"``)."""
    _refuse_ignored([f"--{name}" for name in names if flags.FLAGS[name].present], f" {reason}")


def _under(name: str, field: str) -> bool:
    """Whether the config field ``name`` is ``field`` or one of its fields (``field`` a section)."""
    return name == field or name.startswith(field + ".")


def reject_unread_overrides(
    overrides: Iterable[str],
    reads: Iterable[str],
    why: str,
    hints: Mapping[str, str] | None = None,
) -> None:
    """One ``error:`` line naming the ``--config.<name>`` overrides (``overrides``: the names)
    of fields the script does not read: neither a field of ``reads`` nor one under a section
    of it (``"sampling"`` stands for every ``sampling.*`` field). ``why`` follows "no effect"
    (e.g. ``" in sample.py, which reads ..."``); ``hints`` maps a field or section to a note
    put after the refused overrides under it (the most specific one wins), e.g. the flag
    that does the job instead."""
    reads, hints = tuple(reads), dict(hints or {})
    unread = []
    for name in sorted(overrides):
        if not any(_under(name, field) for field in reads):
            field = max((field for field in hints if _under(name, field)), key=len, default=None)
            unread.append((name, hints[field] if field else ""))
    # Overrides in a row with one note: the note once, after the last of them.
    after = [note for _, note in unread[1:]] + [""]
    _refuse_ignored(
        [
            f"--config.{name}" + (f" ({note})" if note and note != next_note else "")
            for (name, note), next_note in zip(unread, after)
        ],
        why,
    )


def fields_except(*excluded: str) -> tuple[str, ...]:
    """The ``reads`` of ``reject_unread_overrides`` for a script that reads every config field
    but ``excluded`` (fields or sections): each section none of whose fields is excluded
    stands for all of them."""

    def walk(node: ml_collections.ConfigDict, prefix: str) -> list[str]:
        out = []
        for key, value in node.items():
            name = prefix + key
            if name in excluded:
                continue
            inside = any(field.startswith(name + ".") for field in excluded)
            if inside and isinstance(value, ml_collections.ConfigDict):
                out += walk(value, name + ".")
            else:
                out.append(name)
        return out

    return tuple(walk(_config().default_config(), ""))


MODEL_FIELDS = (
    "vq",
    "unet",
    "model",
    "data.cond_frames",
    "data.pred_frames",
    "data.image_size",
    "data.channels",
    "scale_factor",
    "vq_chunk",
    "vq_params",
    "diffusion.timesteps",
    "diffusion.beta_schedule",
    "diffusion.linear_start",
    "diffusion.linear_end",
    "diffusion.parameterization",
    "sampling",
)
"""The fields a saved model's prediction reads (``LatentDiffusion.from_config`` and
``make_predict_fn``, ``checkpoint.load_model``'s ``vq_params`` with a workdir), for the
``reads`` of ``sample.py`` and ``evaluate.py``; the diffusion loss's fields train only."""
MODEL_FIELDS_TEXT = (
    "the model's architecture, latent scale and noise schedule, --config.vq_params, "
    "--config.sampling.*"
)
INFERENCE_HINTS = {
    "mesh": "inference replicates the params and splits each --config.eval.batch_size batch "
    "over every device",
}
"""``hints`` of ``reject_unread_overrides`` in a script that predicts with a saved model."""


def run(main: Callable[..., Any], *, args: str | None = None) -> None:
    """``app.run`` with ``parse_flags`` and ``main`` inside ``one_line_errors``. Without
    ``args`` the script takes only flags: ``main()``, and a positional argument is an error.
    With ``args`` (what they are, e.g. ``"split folders, e.g. data/x/train"``) it takes one or
    more: ``main(arguments)``."""

    def parse(argv: list[str]) -> list[str]:
        return parse_flags(argv, args=args)

    def call(argv: list[str]) -> Any:
        logging.getLogger("absl").addFilter(quiet_orbax_info)
        logging.getLogger("jax._src.xla_bridge").addFilter(quiet_backend_probe)
        with one_line_errors():
            return main(argv[1:]) if args else main()

    app.run(call, flags_parser=parse)


def quiet_orbax_info(record: logging.LogRecord) -> bool:
    """A log filter that drops Orbax's INFO records (dozens per checkpoint save: handler
    registries, throughputs, thread names), which buried the run's own lines; its warnings
    and errors pass."""
    return record.levelno > logging.INFO or f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_backend_probe(record: logging.LogRecord) -> bool:
    """A log filter that drops JAX's INFO records of the platforms it tried and found absent
    ("Unable to initialize backend 'tpu'" on every CPU or GPU run); its warnings pass."""
    return record.levelno > logging.INFO or not record.getMessage().startswith(
        "Unable to initialize backend"
    )


def _config_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """The values of every ``--config=<file>[:args]`` (or ``--config <file>``) on the command
    line, in order, and the names of the ``--config.<field>`` flags, up to ``--``."""
    paths, fields = [], []
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        if not arg.startswith("-"):
            continue
        name, equals, value = arg.lstrip("-").partition("=")
        if name == "config":
            paths.append(value if equals else (argv[i + 1] if i + 1 < len(argv) else ""))
        elif name.startswith("config."):
            fields.append(name)
    return paths, fields


def _config_file(paths: list[str]) -> str | None:
    """The file of the last ``--config`` value (None if none), without its ``:args``."""
    return paths[-1].split(":", 1)[0] if paths else None


def _unknown_field(name: str) -> str | None:
    """Why ``--<name>`` (``config.a.b``) names no field of the schema, or None."""
    node, parts = _config().default_config(), name.split(".")[1:]
    for depth, key in enumerate(parts):
        parent = "".join(p + "." for p in parts[:depth])
        if not isinstance(node, ml_collections.ConfigDict):
            return f"--{name}: config field '{parent[:-1]}' has no sub-fields"
        if key not in node:
            close = difflib.get_close_matches(key, list(node.keys()), n=1)
            hint = (
                f"did you mean --config.{parent}{close[0]}?"
                if close
                else f"known fields here: {', '.join(sorted(node.keys()))}"
            )
            return f"--{name}: unknown config field '{parent}{key}'; {hint}"
        node = node[key]
    return None


def _config_flag_error(path: str | None, fields: list[str], err: Exception) -> str:
    """What went wrong with ``--config`` or a ``--config.<field>`` override, in one line."""
    if path and not os.path.isfile(path):
        return f"config file {path!r} not found; pass a file from configs/"
    for name in fields:
        problem = _unknown_field(name)
        if problem:
            return problem
    return " ".join(str(err).split())


def _original_error(err: BaseException, path: str) -> BaseException:
    """The exception the config file raised: absl re-raises a TypeError/ValueError from
    ``get_config`` as ``IllegalFlagValueError`` (and ml_collections first as a copy holding
    the traceback's text); follow ``__context__`` to the first one raised in the file."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for candidate in reversed(chain):
        if _config().raised_by_config_file(path, candidate):
            return candidate
    return chain[-1]


def _flags_error_line(path: str | None, err: Exception) -> str:
    """absl's flag-parsing error (``FATAL Flags parsing error: ...`` and a second line) as one."""
    message = " ".join(str(err).split())
    override = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)$", message)
    if override:
        field, value, reason = override.groups()
        node = _config().default_config()
        for key in field.split("."):
            node = node.get(key) if isinstance(node, ml_collections.ConfigDict) else None
        kind = f"of type {type(node).__name__}" if node is not None else "of another type"
        return (
            f"--config.{field}={value}: not a valid value ({reason}); "
            f"config field {field!r} takes a value {kind}"
        )
    required = re.search(r"Flag --(\w+) must have a value other than None", message)
    if required:
        return (
            f"--{required.group(1)} is required; pass --{required.group(1)}=... (see --helpshort)"
        )
    unknown = getattr(err, "flagname", None)
    if (
        isinstance(err, flags.UnrecognizedFlagError)
        and unknown
        and unknown.startswith("config.")
        and path is None
        and "config" in flags.FLAGS  # a script that takes a config file
    ):
        return f"--{unknown} overrides a field of a config file: pass --config=<file> with it"
    if isinstance(err, flags.UnrecognizedFlagError) and unknown and "config" in flags.FLAGS:
        fields = _fields_named(unknown)
        if fields:
            overrides = " or ".join(f"--config.{field}" for field in fields)
            return f"{message}; it is a config field: {overrides}"
    return f"{message} (see --helpshort)"


def _fields_named(name: str) -> list[str]:
    """The config fields whose last part is ``name`` (``num_steps``: ``train.num_steps``, ...),
    or its boolean flag form less ``no`` (``nofvd``: ``eval.fvd``)."""
    leaves = []

    def walk(node: ml_collections.ConfigDict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, prefix + key + ".")
            elif key == name or (isinstance(value, bool) and "no" + key == name):
                leaves.append(prefix + key)

    walk(_config().default_config(), "")
    return leaves


def parse_flags(argv: list[str], *, args: str | None = None) -> list[str]:
    """``app.run``'s ``flags_parser`` (``run`` passes it): parses ``argv`` into ``flags.FLAGS``
    and returns the program name and the positional arguments. A missing config file, one that
    fails to load (a syntax error, a failing import, an exception in ``get_config``, a
    ``get_config`` that is missing or returns no ``ConfigDict``), an unknown or mistyped
    ``--config.<field>``, any other flag error, a positional argument of a script that takes
    none (``args`` None) and none of one that takes some (``args``: what they are) exit with
    one ``error:`` line."""
    paths, fields = _config_args(argv)
    if len(paths) > 1 and "config" in flags.FLAGS:
        fail(
            f"--config is given {len(paths)} times ({', '.join(map(repr, paths))}); pass one "
            "config file, and --config.<field>=value to change its fields"
        )
    path = _config_file(paths)
    file_given = bool(path) and os.path.isfile(path)
    try:
        remaining = flags.FLAGS(argv)
        config = flags.FLAGS.config if "config" in flags.FLAGS else None
        if config is not None:  # optional in convert_ldm_vq.py
            try:
                config.keys()  # a config file that failed to load raises when first read
            except AttributeError:  # get_config() returned something else than a ConfigDict
                if path:
                    _config().check_config_value(path, config)
                raise
    except (AttributeError, KeyError, OSError, _config().ConfigError) as err:
        original = _original_error(err, path) if file_given else err
        if file_given and _config().raised_by_config_file(path, original):
            fail(_config().config_file_error(path, original))
        fail(_config_flag_error(path, fields, err))
    except flags.Error as err:
        if file_given and str(err).startswith("flag --config="):
            fail(_config().config_file_error(path, _original_error(err, path)))
        fail(_flags_error_line(path, err))
    except Exception as err:  # raised while loading the config file
        if file_given:
            fail(_config().config_file_error(path, _original_error(err, path)))
        raise
    if args is None and len(remaining) > 1:
        fail(
            f"unexpected arguments {remaining[1:]}; this script takes only flags (see --helpshort)"
        )
    if args is not None and len(remaining) < 2:
        fail(f"give one or more {args}")
    return remaining


def define_overrides_flag(
    help_text: str, source: str = "the saved model's (--workdir or --bundle)"
) -> None:
    """Defines ``--config`` as ``--config.<field>=value`` overrides of a run's saved config
    (``evaluate.py``, ``sample.py``; apply them with ``config.with_overrides``): the script's
    config is ``source``, so a config file (``--config=<file>``) is one ``error:`` line saying
    so.

    ``config_flags.DEFINE_config_dict`` parses the command line when it is defined, so a
    mistyped field exits here with one ``error:`` line (``parse_flags`` comes too late).
    """
    from ml_collections import config_flags

    paths, fields = _config_args(sys.argv)
    if paths:
        fail(
            f"{os.path.basename(sys.argv[0])} takes no config file: its config is {source}, "
            f"changed with --config.<field>=value overrides; drop --config={paths[-1]}"
        )
    try:
        config_flags.DEFINE_config_dict("config", _config().default_config(), help_text)
    except (AttributeError, KeyError) as err:
        fail(_config_flag_error(None, fields, err))
