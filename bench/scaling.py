"""Scaling: ingest instances/s at 1, 2 and 4 parallel senders, and the two-stage network's
images/s at batch 1, 4, 16 and 32.

The ingest side is :mod:`bench.ingest`'s measurement (every receiver freshly started, taking
turns, on the same files) at more sender counts; the inference side is
:mod:`bench.inference`'s network-alone measurement (both backends, both configurations,
no flip averaging) at more batch sizes. Both are plotted against the parameter.

    .venv/bin/python -m bench.scaling [--quick] [--senders 1 2 4] [--batches 1 4 16 32]
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common, inference, ingest
from harness.peers import RECEIVERS, SHIPPED_BUNDLE
from models.serving.manifest import open_bundle

SENDERS = (1, 2, 4)
BATCHES = (1, 4, 16, 32)


def plot(report: common.Report) -> Any:
    fig, axes = common.new_plot(1, 2)
    ax = axes[0][0]
    colors = dict(zip(RECEIVERS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for corpus in ("large", "small"):
        for receiver in RECEIVERS:
            figs = sorted(report.find(part="ingest", corpus=corpus, receiver=receiver),
                          key=lambda f: f.labels["senders"])
            if not figs:
                continue
            x = [f.labels["senders"] for f in figs]
            stats = [common.summarize(f.samples) for f in figs]
            ax.errorbar(x, [s["median"] for s in stats],
                        yerr=[[s["median"] - s["q1"] for s in stats],
                              [s["q3"] - s["median"] for s in stats]],
                        marker="o", capsize=3, linestyle="-" if corpus == "large" else "--",
                        color=colors[receiver],
                        label=f"{ingest.RECEIVER_LABEL[receiver]}, {corpus}")
    senders = sorted({f.labels["senders"] for f in report.find(part="ingest")})
    ax.set_xscale("log", base=2)
    ax.set_xticks(senders, [str(n) for n in senders])
    ax.set_yscale("log")
    ax.set_xlabel("parallel storescu associations")
    ax.set_ylabel("instances/s")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    ax.set_title("Ingest")
    ax = axes[0][1]
    for config in ("fracatlas", "paper"):
        for backend in ("onnxruntime", "torch"):
            figs = sorted(report.find(part="network", config=config, backend=backend),
                          key=lambda f: f.labels["batch"])
            if not figs:
                continue
            stats = [common.summarize(f.samples) for f in figs]
            ax.errorbar([f.labels["batch"] for f in figs], [s["median"] for s in stats],
                        yerr=[[s["median"] - s["q1"] for s in stats],
                              [s["q3"] - s["median"] for s in stats]],
                        marker="o", capsize=3, linestyle="-" if config == "paper" else "--",
                        color="tab:blue" if backend == "onnxruntime" else "tab:red",
                        label=f"{config}, {inference.BACKEND_LABEL[backend]}")
    batches = sorted({f.labels["batch"] for f in report.find(part="network")})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s (two-stage network alone)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    ax.set_title("Inference, no flip averaging")
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--senders", type=int, nargs="+", default=None,
                   help="parallel associations (default 1 2 4, --quick 1 2)")
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes (default 1 4 16 32, --quick 2 4)")
    p.add_argument("--large", type=int, default=None,
                   help="3000 x 2500 instances per send (default 30, --quick 4)")
    p.add_argument("--small", type=int, default=None,
                   help="128 x 128 instances per send (default 500, --quick 20)")
    p.add_argument("--receivers", nargs="+", default=list(RECEIVERS), choices=list(RECEIVERS))
    p.add_argument("--threads", type=int, default=common.usable_cores())
    p.add_argument("--images", type=int, default=None,
                   help="images per timed inference run (default 64, --quick 4)")
    args = p.parse_args(argv)
    args.out = args.out or common.default_out(args.quick)
    import torch

    torch.set_num_threads(args.threads)
    repeat = args.repeat or (1 if args.quick else 3)
    large = args.large or (4 if args.quick else 30)
    small = args.small or (20 if args.quick else 500)
    images = args.images or (4 if args.quick else 64)
    args.senders = args.senders or ([1, 2] if args.quick else list(SENDERS))
    args.batches = args.batches or ([2, 4] if args.quick else list(BATCHES))
    report = common.Report("scaling", "Scaling: parallel senders and batch size", args.quick)
    # the first instances of the ingest benchmark's corpora (written once, shared)
    sets = [ingest.Corpus(c.name, c.files[: large if c.name == "large" else small], c.rows,
                          c.columns)
            for c in ingest.corpora(args.work, large=max(large, 4 if args.quick else 100),
                                    small=max(small, 20 if args.quick else 1000),
                                    quick=args.quick)]
    if args.quick:  # the small corpus is enough to keep the script from rotting
        sets = [c for c in sets if c.name == "small"]
    report.parameters = {
        "senders": args.senders, "batches": args.batches, "repeat": repeat,
        "receivers": args.receivers, "corpora": {c.name: c.describe() for c in sets},
        "threads": args.threads, "images_per_run": images,
    }
    report.notes += [
        "Ingest as in the ingest benchmark (fresh receiver per round, turns rotating, "
        "TCP_NODELAY on the DCMTK side, Ossa's classification held off).",
        "Inference as in the inference benchmark's network-alone part.",
    ]
    for corpus in sets:
        print(f"scaling: ingest, {corpus.name} corpus", flush=True)
        figures = ingest.measure(report, corpus, args.senders, args.receivers, repeat,
                                 args.work, figure_prefix="ingest: ")
        for fig in figures.values():
            fig.labels["part"] = "ingest"
        ingest.add_ratios(report, corpus, figures)
    print("scaling: inference", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        paper = open_bundle(inference.paper_bundle(Path(tmp)))
        shipped = open_bundle(SHIPPED_BUNDLE)
        for config, info, untrained in (("fracatlas", shipped, True), ("paper", paper, False)):
            inference.network_alone(
                report, config, info,
                inference.runners(info, threads=args.threads, untrained_torch=untrained),
                batches=args.batches, images=images, repeat=repeat, ratios=False)
    report.write(args.out, plot)


if __name__ == "__main__":
    main()
