"""What every command-line entry point shares: one-line errors, one folder per job, logs once.

``dasslab-train``, ``dasslab-eval`` and ``dasslab-translate`` are declared as::

    @entry_point("train")
    def main(cfg): ...

which is ``hydra.main(config_name="train")`` plus:

* **One-line errors.** An error the user can cause (any :class:`dasslab.errors.DasslabError`:
  data, config, checkpoint, weights, output folder; also when Hydra's ``instantiate`` wraps
  it, and a mandatory config value left unset) is printed as ONE line
  ``error: <message>`` on stderr and the command exits with status 2. The full traceback
  is printed only with ``HYDRA_FULL_ERROR=1`` or ``DASSLAB_DEBUG=1``. Other exceptions
  (bugs) keep their traceback.
* **One directory per job, one per sweep.** Hydra's run folder and sweep folder are
  ``paths.output_dir`` (``conf/hydra/default.yaml``): a single run writes ``paths.output_dir``; a
  multirun (``-m``) is the folder ``paths.output_dir`` (``multirun.yaml``) whose job *k* gets
  ``paths.output_dir`` = its subfolder *k* (``.hydra/``, its log and all it writes), so jobs never share
  a folder and nothing goes elsewhere. Given ``paths.output_dir=DIR`` on the command line (and no
  ``paths.cache_dir``), the pipeline cache is ``DIR``'s sibling ``cache`` (``conf/paths/default.yaml``).
  In a multirun, W&B runs are grouped by sweep: ``logger.wandb.group`` becomes
  ``<group>/<sweep folder name>`` unless given on the command line.
* **Checked output folder.** ``paths.output_dir`` must be a folder that can be created
  and written, else one line naming the setting.
* **Each log line once, and where things go.** Lightning's own console handler is
  dropped once Hydra's logging is configured (its lines went to both), and the first
  log line of a job says where it writes its outputs and reads/writes its data cache.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

from dasslab.errors import DasslabError

log = logging.getLogger("dasslab")

EXIT_USER_ERROR = 2
_DEBUG_MARK = "_DASSLAB_DEBUG_REQUESTED"  # the user's choice, kept for child processes (DDP workers)
_job_started = False  # set when Hydra hands the config to the job (errors before it are Hydra's set-up)


def debug_requested() -> bool:
    """True when the user asked for full tracebacks (``HYDRA_FULL_ERROR=1`` or ``DASSLAB_DEBUG=1``)."""
    mark = os.environ.get(_DEBUG_MARK)
    if mark is None:
        mark = "1" if "1" in (os.environ.get("HYDRA_FULL_ERROR"), os.environ.get("DASSLAB_DEBUG")) else "0"
        os.environ[_DEBUG_MARK] = mark
    return mark == "1"


def _chain(exc: BaseException):
    """``exc`` and what it wraps: its ``__cause__`` (``raise … from``, Hydra's ``instantiate``), and the
    exception being handled when Hydra or OmegaConf raised theirs. A bug raised while handling one
    of our errors is not a wrapper: it keeps its traceback."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        wrapper = type(exc).__module__.startswith(("hydra.", "omegaconf."))
        exc = exc.__cause__ or (exc.__context__ if wrapper else None)


def one_line(text: str) -> str:
    """``text`` on one line: a line ending with ``:`` takes the lines below it as a comma list,
    other lines are joined by ``; `` (Hydra's messages span lines); Hydra's search path is dropped."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    parts: list[str] = []
    head, items = None, []
    for line in lines + [None]:
        if head is not None and line is not None and not line.endswith(":"):
            items.append(line)
            continue
        if head is not None:
            parts.append(f"{head} {', '.join(items)}".rstrip())
            head, items = None, []
        if line is None:
            break
        if line.endswith(":"):
            head = line
        else:
            parts.append(line)
    out = ""
    for part in parts:
        out += (" " if out.endswith(".") else "; ") + part if out else part
    return out


def user_message(exc: BaseException) -> str | None:
    """The one-line message for an error the user caused, or None for anything else (a bug)."""
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    for e in _chain(exc):
        if isinstance(e, DasslabError):
            return one_line(str(e)) or type(e).__name__
        if isinstance(e, MissingMandatoryValue):
            key = getattr(e, "full_key", None)
            return f"{key}: a value is required (set {key}=… on the command line)" if key else one_line(str(e))
        if isinstance(e, InterpolationResolutionError):     # e.g. ${oops} in a config file
            key, first = getattr(e, "full_key", None), str(e).strip().splitlines()[0]
            return f"{key}: its interpolation cannot be resolved ({first})" if key else one_line(first)
    try:  # Hydra's own short errors (bad override, unknown config group option)
        from hydra.errors import CompactHydraException, MissingConfigException

        if isinstance(exc, (CompactHydraException, MissingConfigException)):
            msg = one_line(str(exc))
            if "'hydra/sweeper/optuna'" in msg:      # hparams_search=… without the optional extra
                msg += "; the Optuna sweeper is the optional extra `optuna`: pip install -e '.[optuna]' (make install)"
            return msg
    except ImportError:  # pragma: no cover
        pass
    return None


def check_output_dir(path: str | os.PathLike, setting: str = "paths.output_dir") -> Path:
    """Create ``path`` if needed and make sure files can be written there; :class:`OutputError` if not."""
    from dasslab.utils.io import make_output_folder

    return make_output_folder(path, setting)


def _overrides() -> list[str]:
    """The command line's overrides as typed (``${…}`` in them left unresolved); [] outside a Hydra job."""
    from omegaconf import OmegaConf

    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return []
        return [str(o) for o in OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)]
    except Exception:  # noqa: BLE001 - no Hydra job (Python API)
        return []


def _given(overrides, key: str) -> bool:
    """``key`` is set on the command line (``key=…``, ``+key=…``, ``++key=…``)."""
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in overrides)


def job_output_dir(cfg) -> Path:
    """Make ``cfg.paths.output_dir`` this job's own folder, Hydra's job folder (``hydra.runtime.output_dir``:
    the run folder, or ``<sweep folder>/<job.num>`` in a multirun); returns it.

    So a ``${now:}`` in its default cannot resolve to another second than the folder Hydra made, and a
    DDP worker process (started with the parent's ``hydra.run.dir``) writes where rank 0 does. Before
    that, the cache (``paths.cache_dir``) is pinned: beside ``paths.output_dir`` when that is given on the
    command line, else where the config puts it; and a multirun's W&B group names its sweep.
    """
    from omegaconf import OmegaConf, open_dict

    if cfg.get("paths") is None:
        return Path.cwd()
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - no Hydra job (Python API): keep the config as it is
        hc = None
    if hc is None or OmegaConf.is_missing(hc.runtime, "output_dir"):
        return Path(cfg.paths.output_dir)
    job_dir = Path(hc.runtime.output_dir)
    given = _overrides()
    with open_dict(cfg):
        if _given(given, "paths.output_dir") and not _given(given, "paths.cache_dir"):
            cfg.paths.cache_dir = str(Path(cfg.paths.output_dir).parent / "cache")
        elif cfg.paths.get("cache_dir") is not None:
            cfg.paths.cache_dir = str(cfg.paths.cache_dir)      # resolved before output_dir changes
        wandb = cfg.logger.get("wandb") if cfg.get("logger") else None
        if hc.mode == RunMode.MULTIRUN and wandb is not None and not _given(given, "logger.wandb.group"):
            sweep = Path(str(hc.sweep.dir)).name
            wandb.group = f"{wandb.group}/{sweep}"
        cfg.paths.output_dir = str(job_dir)
    saved = job_dir / str(hc.output_subdir or ".hydra") / "config.yaml"
    if hc.output_subdir is not None and saved.exists():  # Hydra saved it before the job ran
        from dasslab.utils.io import atomic_write_text

        atomic_write_text(saved, OmegaConf.to_yaml(cfg))
    return job_dir


def log_once() -> None:
    """Drop Lightning's own console handlers when the root logger has handlers (Hydra's): one line each."""
    import lightning  # noqa: F401  (its import adds the handler we remove)

    root = logging.getLogger()
    if not root.handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True


def prepare_job(cfg) -> Path:
    """Per-job set-up before the task: the command line's interpolations resolve, own output folder (checked),
    logging once, where things go."""
    from dasslab.checks.settings import check_overrides_resolve

    check_overrides_resolve(cfg, _overrides())
    out = job_output_dir(cfg)
    if cfg.get("paths") is not None:
        check_output_dir(cfg.paths.output_dir)
    log_once()
    paths = cfg.get("paths") or {}
    data, cache = paths.get("data_dir"), paths.get("cache_dir")
    log.info(f"outputs: {Path(out).resolve()}" + (f"; pipeline cache: {Path(cache).resolve()}" if cache else "")
             + (f"; data cache: {Path(data).resolve()}" if data else ""))
    note = smoke_note(cfg)
    if note:
        log.info(note)
    return out


def smoke_note(cfg) -> str | None:
    """What ``debug=smoke`` changes, in one line (``conf/debug/smoke.yaml``), or None without it: the sizes and
    budgets it sets, and for a folder pair the size of the user's own images that it resizes."""
    from omegaconf import OmegaConf

    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get("debug") if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - no Hydra job
        choice = None
    if choice != "smoke":
        return None

    def get(key):
        try:
            return OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except Exception:  # noqa: BLE001 - a folder pair without a root: the run's own error says so
            return None

    size = get("dataset.image_size")
    size = list(size) if size is not None else None
    own = ""
    if get("dataset.name") == "folder" and get("dataset.root") is not None:
        try:
            from dasslab.data.folder import working_size

            native = working_size(get("dataset.root"), int(get("dataset.max_side")), int(get("dataset.size_multiple")))
            if list(native) != size:
                own = f" (your images' working size is {list(native)}: they are resized)"
        except Exception:  # noqa: BLE001 - the data check names what is wrong with the folder
            own = ""
    steps = ", ".join(f"{get(k)} {name}" for k, name in (("segmenter.max_steps", "segmenter"),
                                                         ("diffusion.max_steps", "DDPM"), ("ptl.max_steps", "PTL"))
                      if get(k) is not None)
    return (f"debug=smoke changes the run (conf/debug/smoke.yaml): small backbone and DDPM on the CPU; images "
            f"resized to {size}{own}, crops {list(get('dataset.crop_size') or [])}; {steps} steps; the first "
            f"{get('data.limit_train')} training and {get('data.limit_val')} validation images of each split"
            + ("; no progress bar" if get("trainer.enable_progress_bar") is False else ""))


def fail(msg: str) -> None:
    """Print ``error: msg`` on stderr and exit with status 2."""
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_USER_ERROR)


def report(exc: BaseException) -> None:
    """Print one line for a user error and exit with status 2; anything else propagates."""
    msg = user_message(exc)
    if msg is None and not _job_started and isinstance(exc, OSError) and exc.filename:
        # Hydra creates the run folder before the job starts
        msg = (f"{exc.filename}: cannot create the run folder ({exc.strerror}); expected a writable place "
               f"for paths.output_dir (multirun: hydra.sweep.dir)")
    if msg is None or debug_requested():
        raise exc
    fail(msg)


def entry_point(config_name: str):
    """``hydra.main`` for ``conf/<config_name>.yaml`` with the behaviour described in the module docstring."""
    import hydra

    from dasslab.config import CONF_DIR

    def decorate(task):
        @functools.wraps(task)
        def job(cfg):
            global _job_started
            _job_started = True
            try:
                prepare_job(cfg)
                from dasslab.checkpoints import trust_checkpoints

                with trust_checkpoints(cfg.get("trust_checkpoint")):   # every file read in this run
                    return task(cfg)
            except Exception as exc:  # noqa: BLE001
                # answered here, before Hydra adds "Error executing job with overrides: …"
                msg = user_message(exc)
                if msg is None or debug_requested():
                    raise
                fail(msg)

        hydra_main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(job)

        @functools.wraps(task)
        def main(*args, **kwargs):
            global _job_started
            _job_started = False
            debug_requested()  # remember the user's choice before we change HYDRA_FULL_ERROR
            os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's printer
            try:
                return hydra_main(*args, **kwargs)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001
                report(exc)

        return main

    return decorate


def parse_settings(argv, settings: dict, help_text: str, bare: str | None = None, rest: bool = False,
                   aliases: dict | None = None):
    """The ``key=value`` arguments of a command that is not a Hydra app, read with Hydra's own override grammar
    (quoting, ``[a,b]`` lists, ``a,b`` comma lists), so that every command takes its settings alike.

    ``settings``: the command's own keys and their defaults (a list default collects every occurrence); returns
    ``(values, others)``: ``others`` are the arguments of other keys as given (``rest``: handed on to the Hydra
    runs the command starts; else each is an error naming the key). A word without ``=`` sets ``bare``.
    ``aliases``: old flags -> (key, takes a value): ``--dry-run`` -> ``dry_run=true``; ``--seeds 3`` and
    ``--seeds=3`` -> ``seeds=3``. ``-h``/``--help`` prints ``help_text`` and exits 0. A bad argument is a
    :class:`~dasslab.errors.ConfigError`, one line.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dasslab.errors import ConfigError

    argv, aliases = list(argv), dict(aliases or {})
    if any(a in ("-h", "--help") for a in argv):
        print(help_text)
        raise SystemExit(0)
    words, i = [], 0
    while i < len(argv):                        # old flags -> key=value
        a = argv[i]
        flag, eq, value = a.partition("=")
        if flag in aliases:
            key, takes_value = aliases[flag]
            if not takes_value:
                words.append(f"{key}=true")
            elif eq:
                words.append(f"{key}={value}")
            elif i + 1 < len(argv):
                words.append(f"{key}={argv[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"{flag}: a value is required ({key}=…)")
        elif a.startswith("-"):
            raise ConfigError(f"{a}: unknown option; expected key=value settings (--help lists them)")
        elif not eq and bare is not None:
            words.append(f"{bare}={a}")
        else:
            words.append(a)
        i += 1
    values, others = dict(settings), []
    parser = OverridesParser.create()
    for word in words:
        try:
            o = parser.parse_override(word)
        except Exception as e:  # noqa: BLE001 - Hydra's grammar errors
            raise ConfigError(f"{word}: cannot be read as key=value ({one_line(str(e))}); quote values with "
                              f"unusual characters, e.g. key='a b'") from None
        key = o.key_or_group
        if key not in settings:
            if rest:
                others.append(word)
                continue
            raise ConfigError(f"{word}: unknown setting {key}; expected {', '.join(f'{k}=' for k in settings)}")
        value = list(o.sweep_string_iterator()) if o.is_sweep_override() else o.value()
        if isinstance(settings[key], list):     # a list setting: each occurrence adds (runs=A runs=B,C)
            values[key] = [*values[key], *(value if isinstance(value, list) else [value])]
        else:
            values[key] = value
    return values, others
