"""``ossa`` command line: parse arguments, load the configuration once, wire, run.

Sub-commands:

``ossa serve --config config.toml``
    Run the DICOM listener and worker until SIGINT/SIGTERM; SIGHUP re-reads the file.
``ossa phantom --out DIR --studies N --seed S``
    Write the procedural phantom dataset in the MURA-v1.1 layout.
``ossa train --data DIR --out BUNDLE``
    Train a two-stage model bundle.
``ossa evaluate --data DIR --bundle BUNDLE --out REPORT_DIR``
    Evaluate a bundle on a MURA-layout split and write a report.
``ossa predict --bundle BUNDLE FILE...``
    Predict PNG, JPEG or DICOM files; JSON lines on standard output.
``ossa data import-fracatlas SRC OUT``
    Turn FracAtlas's release layout into a labelled dataset.
``ossa bundle export-onnx BUNDLE``
    Add ONNX networks to a bundle that has only PyTorch weights.
``ossa status [--json]``, ``ossa retry [--study UID | --destination NAME | --source NAME |
--all-failed]``
    The state store's studies, jobs, deliveries and sources; re-queue failed deliveries
    and retrievals.
``ossa analyze --source NAME --study UID [--wait S]``
    Retrieve one study from a source (DICOMweb, C-GET or C-MOVE) and report it.
``ossa reload --config config.toml``
    Validate the file and send SIGHUP to the running ``ossa serve``, which re-reads it.
``ossa check-config --config config.toml``
    Validate the configuration, check the bundle and store, C-ECHO every destination.
``ossa export-dicom --data DIR --out DIR``
    Write phantom studies as DICOM CR/DX files for ``storescu``.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from worker.console import fail

logger = logging.getLogger(__name__)


#: Attributes every :class:`logging.LogRecord` has; the others came with ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the fields given with ``extra=`` (the audit line's ``calling_ae``,
    ``outcome``, ...) as keys of their own, and ``exception`` with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def configure_logging(level: str, fmt: str = "plain") -> None:
    """Configure logging for the process; only the entry point does this.

    ``fmt`` is ``logging.format``: ``"plain"`` lines or ``"json"`` (:class:`JsonFormatter`).
    pynetdicom and highdicom are kept at WARNING: at lower levels they dump DIMSE messages
    and source attributes, and Ossa's logs must not carry patient data. For the same reason
    pydicom does not validate values as it reads them or as they are set
    (``reading_validation_mode`` and ``writing_validation_mode`` IGNORE): its warning about
    an invalid value quotes the value, and in a damaged data set that can run on into the
    Patient's Name (found by tests/test_fuzz.py and the suite's log search,
    tests/logscan.py), and an invalid Patient ID copied into an SR as the source has it
    would be quoted too. Ossa validates the values it copies itself and names the attribute only
    (:func:`dicom_io.derived.source_header`).
    """
    import pydicom.config

    if fmt not in ("plain", "json"):
        raise ValueError(f"logging.format must be 'plain' or 'json', got {fmt!r}")
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
                "json": {"()": JsonFormatter},
            },
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": fmt,
                    "stream": "ext://sys.stderr",
                }
            },
            # Third-party loggers that dump DIMSE messages or source attributes stay quiet.
            "loggers": {
                "pynetdicom": {"level": "WARNING"},
                "highdicom": {"level": "WARNING"},
                # Each decoder plugin that fails logs a traceback; Ossa logs one line naming
                # the instance and the transfer syntax instead.
                "pydicom.pixels": {"level": "CRITICAL"},
                # dicomweb-client's retry helper logs a traceback per network failure; the
                # outbox logs one line per attempt.
                "retrying": {"level": "ERROR"},
            },
            "root": {"level": level, "handlers": ["stderr"]},
        }
    )


def serve(args: argparse.Namespace) -> int:
    """``ossa serve``: run the service with the given configuration file."""
    from models.serving.manifest import BundleError
    from models.serving.predict import TwoStageClassifier
    from worker.allocator import keep_freed_memory
    from worker.config import ConfigError, load_config
    from worker.service import build_service
    from worker.store import SchemaError, StoreError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(str(exc))
    configure_logging(config.logging.level, config.logging.format)
    if not keep_freed_memory():
        logger.info("C library without mallopt: freed memory goes back to the system")

    try:
        classifier = TwoStageClassifier.from_bundle(
            config.model.bundle, backend=config.model.backend, threads=config.model.threads,
            batch_size=config.model.batch_size,
        )
    except (BundleError, OSError) as exc:
        return fail(f"model.bundle: {exc}")
    logger.info("Loaded model bundle %s", config.model.bundle)
    if not config.destinations:
        logger.warning("No [[destinations]] configured: SRs are written to disk only")

    stop = threading.Event()
    try:
        service = build_service(config, classifier, stop_event=stop)
    except (SchemaError, OSError, StoreError) as exc:
        return fail(f"storage.root: {exc}", 1)

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("Received signal %d; stopping", signum)
        service.request_stop()

    def _on_hangup(signum: int, frame: FrameType | None) -> None:
        service.request_reload()  # the main thread reloads: a signal handler must not block

    def _reload() -> None:
        logger.info("Reloading %s", args.config)
        try:
            service.reload(load_config(args.config))
        except ConfigError as exc:
            logger.error("Configuration not reloaded, the running one is kept: %s", exc)
        except Exception:  # e.g. a destination that cannot be built: nothing was changed
            logger.exception("Configuration not reloaded, the running one is kept")

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_hangup)
    try:
        service.start()
    except ConfigError as exc:  # e.g. a [listener.tls] file that cannot be used
        return fail(str(exc))
    except OSError as exc:
        return fail(
            f"listener: cannot listen on {config.listener.host}:{config.listener.port}: {exc}", 1
        )
    service.run(on_reload=_reload)
    return service.stop()


def _admin(name: str) -> Callable[[argparse.Namespace], int]:
    """An operator command of :mod:`worker.admin`, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        from worker import admin

        return int(getattr(admin, name)(args))

    return run


def predict(args: argparse.Namespace) -> int:
    """``ossa predict``: predict image files, JSON lines on standard output."""
    from worker import predict as cli_predict

    return cli_predict.main(args)


def bundle_export_onnx(args: argparse.Namespace) -> int:
    """``ossa bundle export-onnx``: add ONNX networks to an existing bundle."""
    from models.serving.manifest import BundleError

    try:
        from models.training.bundle import add_onnx
    except ImportError as exc:
        return fail(f"export-onnx needs PyTorch: pip install 'ossa[train]' ({exc})")
    try:
        info = add_onnx(args.bundle)
    except BundleError as exc:
        return fail(f"{args.bundle}: {exc}", 1)
    print(info.version)
    return 0


def import_fracatlas(args: argparse.Namespace) -> int:
    """``ossa data import-fracatlas``: FracAtlas's release layout to a labelled dataset."""
    from models.datasets import fracatlas

    return fracatlas.main(args)


def bundle_serving_copy(args: argparse.Namespace) -> int:
    """``ossa bundle serving-copy``: the bundle's ONNX networks and manifest, no ``.pt``."""
    from models.serving.manifest import BundleError, serving_copy

    try:
        info = serving_copy(args.bundle, args.out)
    except (BundleError, FileExistsError) as exc:
        return fail(str(exc), 1)
    print(info.version)
    return 0


def phantom(args: argparse.Namespace) -> int:
    """``ossa phantom``: write the procedural MURA-layout phantom."""
    from models.datasets import phantom as phantom_module

    return phantom_module.main(args)


def train(args: argparse.Namespace) -> int:
    """``ossa train``: train a model bundle."""
    from models.training import train as train_module

    return train_module.main(args)


def evaluate(args: argparse.Namespace) -> int:
    """``ossa evaluate``: evaluate a model bundle."""
    from models.evaluation import evaluate as evaluate_module

    return evaluate_module.main(args)


def export_dicom(args: argparse.Namespace) -> int:
    """``ossa export-dicom``: write phantom studies as DICOM files."""
    from worker.export import export_studies

    written = export_studies(
        args.data, args.out, split=args.split, limit=args.studies, modality=args.modality
    )
    for folder, label in written:
        print(f"{folder}\t{'abnormal' if label else 'normal'}")
    return 0


def _train_parents(command: str | None) -> list[argparse.ArgumentParser]:
    """``ossa train``'s options, imported only when that is the command: ``models.training.train``
    imports torch, which the serving commands never load (it is in the ``[train]`` extra)."""
    if command != "train":
        return []
    from models.training import train as train_module

    return [train_module.get_args_parser(add_help=False)]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ossa`` argument parser with all sub-commands.

    Parameters
    ----------
    command : str, optional
        The sub-command about to be parsed; ``train``'s options are only built for it.
    """
    from models.datasets import fracatlas
    from models.datasets import phantom as phantom_module
    from models.evaluation import evaluate as evaluate_module
    from worker import predict as cli_predict

    parser = argparse.ArgumentParser(
        prog="ossa",
        description="Ossa: research triage of upper-extremity radiographs. Not for diagnostic use.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("serve", help="run the DICOM listener and worker")
    p.add_argument("--config", type=Path, default=Path("config.toml"), help="configuration file")
    p.set_defaults(func=serve)

    p = commands.add_parser("status", help="studies, jobs and deliveries by state (UIDs only)")
    p.add_argument("--config", type=Path, default=Path("config.toml"), help="configuration file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_admin("status"))

    p = commands.add_parser("retry", help="re-queue failed deliveries and retrievals")
    p.add_argument("--config", type=Path, default=Path("config.toml"), help="configuration file")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="UID", help="the deliveries (and retrievals) of a study")
    which.add_argument("--destination", metavar="NAME", help="the deliveries to one destination")
    which.add_argument("--source", metavar="NAME", help="the failed retrievals from one source")
    which.add_argument("--all-failed", action="store_true",
                       help="every failed delivery and retrieval")
    p.set_defaults(func=_admin("retry"))

    p = commands.add_parser("analyze", help="retrieve one study from a source and report it")
    p.add_argument("--config", type=Path, default=Path("config.toml"), help="configuration file")
    p.add_argument("--source", metavar="NAME", required=True, help="a [[sources]] name")
    p.add_argument("--study", metavar="UID", required=True, help="the Study Instance UID")
    p.add_argument("--wait", metavar="S", type=float, default=None,
                   help="follow it up to S seconds: exit 0 reported, 1 failed, 3 still running")
    p.set_defaults(func=_admin("analyze"))

    p = commands.add_parser(
        "reload", help="validate config.toml and have the running `ossa serve` re-read it"
    )
    p.add_argument("--config", type=Path, default=Path("config.toml"), help="configuration file")
    p.set_defaults(func=_admin("reload"))

    p = commands.add_parser(
        "check-config", help="validate the configuration and C-ECHO every destination"
    )
    p.add_argument("--config", type=Path, default=Path("config.toml"), help="configuration file")
    p.set_defaults(func=_admin("check_config"))

    p = commands.add_parser(
        "phantom",
        parents=[phantom_module.get_args_parser(add_help=False)],
        help="write the procedural phantom dataset (MURA-v1.1 layout)",
    )
    p.set_defaults(func=phantom)

    p = commands.add_parser(
        "train", parents=_train_parents(command),
        help="train a bundle (needs the [train] extra: PyTorch)",
    )
    p.set_defaults(func=train)

    p = commands.add_parser(
        "evaluate",
        parents=[evaluate_module.get_args_parser(add_help=False)],
        help="evaluate a bundle on a MURA-layout split",
    )
    p.set_defaults(func=evaluate)

    p = commands.add_parser(
        "predict",
        parents=[cli_predict.get_args_parser(add_help=False)],
        help="predict PNG, JPEG or DICOM files (JSON lines)",
    )
    p.set_defaults(func=predict)

    p = commands.add_parser("data", help="dataset tools")
    data_commands = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = data_commands.add_parser(
        "import-fracatlas", parents=[fracatlas.get_args_parser(add_help=False)],
        help="turn a FracAtlas download into a labelled dataset (labels.csv)",
    )
    q.set_defaults(func=import_fracatlas)

    p = commands.add_parser("bundle", help="model bundle tools")
    bundle_commands = p.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    q = bundle_commands.add_parser("export-onnx",
                                   help="add ONNX networks to a bundle (needs the [train] extra)")
    q.add_argument("bundle", type=Path, help="bundle directory")
    q.set_defaults(func=bundle_export_onnx)
    q = bundle_commands.add_parser(
        "serving-copy", help="copy a bundle without its PyTorch weights (what bundles/ ships)")
    q.add_argument("bundle", type=Path, help="bundle directory")
    q.add_argument("out", type=Path, help="directory of the copy")
    q.set_defaults(func=bundle_serving_copy)

    p = commands.add_parser(
        "export-dicom", help="write phantom studies as DICOM CR/DX files for storescu"
    )
    p.add_argument("--data", type=Path, required=True, help="phantom (MURA-v1.1 layout) root")
    p.add_argument("--out", type=Path, required=True, help="output folder, one sub-folder a study")
    p.add_argument("--split", choices=("train", "valid"), default="valid")
    p.add_argument("--studies", type=int, default=5, help="how many studies (default 5)")
    p.add_argument("--modality", choices=("CR", "DX"), default="CR")
    p.set_defaults(func=export_dicom)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ossa`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    if args.command != "serve":
        configure_logging("INFO")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
