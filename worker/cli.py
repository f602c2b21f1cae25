"""``ossa`` command line: parse arguments, load the configuration once, wire, run.

Sub-commands:

``ossa serve --config config.toml``
    Run the DICOM listener and worker until SIGINT/SIGTERM.
``ossa phantom --out DIR --studies N --seed S``
    Write the procedural phantom dataset in the MURA-v1.1 layout.
``ossa train --data DIR --out BUNDLE``
    Train a two-stage model bundle.
``ossa evaluate --data DIR --bundle BUNDLE``
    Evaluate a bundle on a MURA-layout split.
``ossa export-dicom --data DIR --out DIR``
    Write phantom studies as DICOM CR/DX files for ``storescu``.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    """Configure logging for the process; only the entry point does this.

    pynetdicom and highdicom are kept at WARNING: at lower levels they dump DIMSE messages
    and source attributes, and Ossa's logs must not carry patient data.
    """
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "plain",
                    "stream": "ext://sys.stderr",
                }
            },
            # Third-party loggers that dump DIMSE messages or source attributes stay quiet.
            "loggers": {
                "pynetdicom": {"level": "WARNING"},
                "highdicom": {"level": "WARNING"},
            },
            "root": {"level": level, "handlers": ["stderr"]},
        }
    )


def _fail(message: str, code: int = 2) -> int:
    print(f"ossa: error: {message}", file=sys.stderr)
    return code


def serve(args: argparse.Namespace) -> int:
    """``ossa serve``: run the service with the given configuration file."""
    from models.bundle import BundleError
    from models.predict import TwoStageClassifier
    from worker.assembly import StudyAssembler
    from worker.config import ConfigError, load_config
    from worker.dispatch import Dispatcher
    from worker.jobs import StudyProcessor
    from worker.service import Service
    from worker.spool import Spool

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    configure_logging(config.logging.level)

    if config.model.threads:
        import torch

        torch.set_num_threads(config.model.threads)
    try:
        classifier = TwoStageClassifier.from_bundle(config.model.bundle)
    except (BundleError, OSError) as exc:
        return _fail(f"model.bundle: {exc}")
    logger.info("Loaded model bundle %s", config.model.bundle)
    if not config.destinations:
        logger.warning("No [[destinations]] configured: SRs are written to disk only")

    stop = threading.Event()
    spool = Spool(config.storage.root)
    assembler = StudyAssembler(config.study.completion_timeout_s)
    dispatcher = Dispatcher(
        config.destinations, calling_ae_title=config.listener.ae_title, stop=stop
    )
    service = Service(
        config.listener, spool, assembler, StudyProcessor(classifier, dispatcher), stop_event=stop
    )

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("Received signal %d; stopping", signum)
        service.request_stop()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        service.start()
    except OSError as exc:
        return _fail(
            f"listener: cannot listen on {config.listener.host}:{config.listener.port}: {exc}", 1
        )
    service.run()
    return service.stop()


def phantom(args: argparse.Namespace) -> int:
    """``ossa phantom``: write the procedural MURA-layout phantom."""
    from models import phantom as phantom_module

    return phantom_module.main(args)


def train(args: argparse.Namespace) -> int:
    """``ossa train``: train a model bundle."""
    from models import train as train_module

    return train_module.main(args)


def evaluate(args: argparse.Namespace) -> int:
    """``ossa evaluate``: evaluate a model bundle."""
    from models import evaluate as evaluate_module

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


def build_parser() -> argparse.ArgumentParser:
    """The ``ossa`` argument parser with all sub-commands."""
    from models import evaluate as evaluate_module
    from models import phantom as phantom_module
    from models import train as train_module

    parser = argparse.ArgumentParser(
        prog="ossa",
        description="Ossa: research triage of upper-extremity radiographs. Not for diagnostic use.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("serve", help="run the DICOM listener and worker")
    p.add_argument("--config", type=Path, default=Path("config.toml"), help="configuration file")
    p.set_defaults(func=serve)

    p = commands.add_parser(
        "phantom",
        parents=[phantom_module.get_args_parser(add_help=False)],
        help="write the procedural phantom dataset (MURA-v1.1 layout)",
    )
    p.set_defaults(func=phantom)

    p = commands.add_parser(
        "train", parents=[train_module.get_args_parser(add_help=False)], help="train a bundle"
    )
    p.set_defaults(func=train)

    p = commands.add_parser(
        "evaluate",
        parents=[evaluate_module.get_args_parser(add_help=False)],
        help="evaluate a bundle on a MURA-layout split",
    )
    p.set_defaults(func=evaluate)

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
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        configure_logging("INFO")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
