"""Inference: images/s of the two-stage network, ONNX Runtime against PyTorch eager, and of the
whole path from DICOM bytes to probabilities.

**Network alone.** Two configurations, at batch 1, 8 and 32, without flip averaging (the
engine is built with ``flip_tta=False``; served bundles set it in their manifest), every image
through stage 1 and then one stage-2 network, as in serving:

- ``fracatlas``, the shipped bundle (MobileNetV2, width 0.5, 224 px): ONNX Runtime runs its
  ``.onnx`` files; the bundle holds no PyTorch weights, so the PyTorch side runs the same
  architecture built from its manifest with untrained weights (the same arithmetic);
- ``paper``, El-Saadawy et al.'s configuration (MobileNetV2, width 1.0, 224 px, stage 1 over
  MURA's 7 bone types + OTHER): untrained weights, saved once and run by both backends. Only
  the one stage-2 network the benchmark routes to is built (every image takes one stage-2
  network, so the cost per image is that of the full bundle).

Both backends get the same inputs in the same run, taking turns repeat by repeat, with the
same number of threads (``--threads``, default: the usable cores).

**Whole path.** What the classify stage does for each image of a study, with the shipped
bundle as served (its manifest's flip averaging): ``pydicom.dcmread`` of the file's bytes,
``dicom_io.pixels.normalize_radiograph`` at the working size the service asks for
(``Preprocessing.working_side``: the network's input size, or the secondary capture's
``RENDER_SIDE`` when secondary captures are written, as by default), the bundle's
preprocessing (foreground crop, resize, CLAHE), the two-stage network with abstention and the
findings, and with captures the building and encoding of each assessed image's secondary
capture, on 3000 x 2500 12-bit DX radiographs, uncompressed, JPEG-LS lossless and JPEG 2000
lossless; both with and without secondary captures. With captures, every film gets one, as
in an abnormal study: a synthetic film the shipped model does not assess (it abstains on
them) is given an abnormal verdict with one finding for its capture. The time per image of
each step is reported too.

    .venv/bin/python -m bench.inference [--quick] [--threads 2] [--images 64] [--repeat 5]
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pydicom
from numpy.typing import NDArray
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless

from bench import common
from bench.radiographs import sizes, write_corpus
from dicom_io.capture import RENDER_SIDE, build_secondary_capture, sc_label
from dicom_io.derived import encode_file
from dicom_io.pixels import normalize_radiograph
from harness.peers import SHIPPED_BUNDLE
from models.serving.engine import BACKENDS, NetworkRunner, TwoStageEngine
from models.serving.findings import Finding
from models.serving.manifest import BundleInfo, open_bundle
from models.serving.predict import TwoStageClassifier, make_runner
from models.serving.results import ImagePrediction
from models.serving.taxonomy import MURA_TAXONOMY, Taxonomy
from worker.allocator import keep_freed_memory
from worker.cli import configure_logging

#: Network-alone batch sizes of issue 11.
BATCHES = (1, 8, 32)
#: Transfer syntaxes of the whole-path measurement.
SYNTAXES: dict[str, UID] = {
    "uncompressed": ExplicitVRLittleEndian,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}
#: Pause before each timed call: ONNX Runtime's and OpenMP's worker threads spin for a while
#: after a call (OpenMP's block time is 200 ms), which would slow the other backend down.
SETTLE_S = 0.3
#: Longest timed call of the network alone: fewer images where a backend is slower.
MAX_CALL_S = 2.0
BACKEND_LABEL = {"onnxruntime": "ONNX Runtime", "torch": "PyTorch eager"}


def paper_bundle(root: Path) -> Path:
    """An untrained bundle of the paper's configuration (MobileNetV2, width 1.0, 224 px) with
    PyTorch and ONNX weights; stage 2 only for WRIST (the class the benchmark routes to)."""
    import torch

    from models.serving.enhance import Preprocessing
    from models.training.bundle import new_network, save_bundle

    torch.manual_seed(0)
    taxonomy = Taxonomy(tuple(replace(c, assessed=c.name == "WRIST") for c in MURA_TAXONOMY))
    network = new_network(taxonomy, architecture="mobilenet_v2", width_mult=1.0,
                          in_channels=1).eval()
    return save_bundle(root / "paper-224", network, architecture="mobilenet_v2",
                       width_mult=1.0, preprocessing=Preprocessing(input_size=224,
                                                                   kernel_size=56),
                       thresholds={"WRIST": 0.5}, threshold_rule="0.5", flip_tta=False,
                       name="paper-224")


def runners(info: BundleInfo, *, threads: int, untrained_torch: bool) -> dict[str, NetworkRunner]:
    """Both backends for ``info``; ``untrained_torch``: PyTorch runs the manifest's
    architecture with fresh weights (for a bundle that ships ONNX files only)."""
    found = {"onnxruntime": make_runner(info, backend="onnxruntime", threads=threads)}
    if untrained_torch:
        import torch

        from models.training.bundle import build_network
        from models.training.two_stage import TorchRunner

        torch.manual_seed(0)
        torch.set_num_threads(threads)
        found["torch"] = TorchRunner(build_network(info.manifest).eval())
    else:
        found["torch"] = make_runner(info, backend="torch", threads=threads)
    return found


def _images_within(engine: TwoStageEngine, inputs: NDArray[np.float32], route: list[int],
                   batch: int, seconds: float) -> int:
    """How many of ``inputs`` (whole batches, at least one) ``engine`` gets through in about
    ``seconds``, from the time of one batch."""
    one = common.time_call(partial(engine.predict, inputs[:batch], route=route[:batch]))
    return max(batch, min(len(inputs), int(seconds / max(one, 1e-6)) * batch))


def network_alone(report: common.Report, config: str, info: BundleInfo,
                  backends: dict[str, NetworkRunner], *, batches: Sequence[int], images: int,
                  repeat: int, ratios: bool = True, max_call_s: float = MAX_CALL_S
                  ) -> dict[tuple[str, int], common.Figure]:
    """Images/s of each backend at each batch size (backends alternate repeat by repeat).

    A timed call runs ``images`` images, or fewer (whole batches) where a backend would take
    longer than ``max_call_s`` (PyTorch at batch 1 on a busy machine): the same inputs,
    fewer of them.
    """
    manifest = info.manifest
    size = manifest.preprocessing.input_size
    inputs = np.random.default_rng(0).normal(
        size=(images, manifest.preprocessing.channels, size, size)).astype(np.float32)
    # every image through stage 1 and the first assessed class's stage-2 network, whatever
    # stage 1 would have routed it to (untrained weights route at random)
    route = [manifest.taxonomy.index(manifest.taxonomy.assessed[0])] * images
    found: dict[tuple[str, int], common.Figure] = {}
    for batch in batches:
        engines = {b: TwoStageEngine(r, manifest.taxonomy, flip_tta=False, batch_size=batch)
                   for b, r in backends.items()}
        counts = {}
        for backend, engine in engines.items():  # warm-up: allocations, thread pools
            engine.predict(inputs[:batch], route=route[:batch])
            counts[backend] = _images_within(engine, inputs, route, batch, max_call_s)
        samples: dict[str, list[float]] = {b: [] for b in engines}
        for _ in range(repeat):
            for backend, engine in engines.items():
                n = counts[backend]
                time.sleep(SETTLE_S)
                seconds = common.time_call(partial(engine.predict, inputs[:n], route=route[:n]))
                samples[backend].append(n / seconds)
        for backend in engines:
            found[backend, batch] = report.figure(
                f"network alone, {config} ({manifest.architecture} x{manifest.width_mult}, "
                f"{size} px), {BACKEND_LABEL[backend]}, batch {batch}", "images/s",
                samples[backend], part="network", config=config, backend=backend, batch=batch,
                images_per_call=counts[backend])
        print(f"  {config:9s} batch {batch:3d}: " + ", ".join(
            f"{b} {common.summarize(s)['median']:.1f} img/s" for b, s in samples.items()),
            flush=True)
        if ratios and {"onnxruntime", "torch"} <= set(engines):
            report.ratio(f"ONNX Runtime / PyTorch, {config}, batch {batch}",
                         found["onnxruntime", batch], found["torch", batch], config=config,
                         batch=batch)
    return found


#: Series Instance UID of the captures the benchmark builds (never sent anywhere).
BENCH_SERIES_UID = "1.2.826.0.1.3680043.8.498.1"


def _stand_in(prediction: ImagePrediction, image: NDArray[np.float32],
              thresholds: dict[str, float]) -> ImagePrediction:
    """An abnormal verdict with one finding in the middle of the film, for a synthetic film
    the model did not assess: the service builds a capture for each assessed image only,
    and the benchmark times the capture of every film, as of an abnormal study."""
    rows, columns = image.shape
    box = Finding(columns * 0.4, rows * 0.4, columns * 0.55, rows * 0.6, 0.9)
    return replace(prediction, body_part=next(iter(thresholds)), assessed=True,
                   abnormal_probability=0.9, reason="", findings=(box,))


def whole_path(report: common.Report, classifier: TwoStageClassifier, files: list[Path],
               syntax: str, repeat: int, *, captures: bool = True) -> None:
    """Images/s from DICOM bytes to probabilities, and the time per image of each step.

    ``captures``: render at the size the service uses when it writes secondary captures
    (``[results] secondary_capture``, on by default), else at the network's input size.
    """
    max_side = classifier.preprocessing.working_side(RENDER_SIDE if captures else None)
    blobs = [f.read_bytes() for f in files]
    n = len(blobs)
    steps: dict[str, list[float]] = {"decode": [], "preprocess": [], "network": []}
    if captures:
        steps["capture"] = []
    thresholds = dict(classifier.thresholds)
    totals = []

    def run() -> tuple[float, ...]:
        start = time.perf_counter()
        datasets, images = [], []
        for blob in blobs:  # as the classify stage: a film's pixel data dropped once rendered
            ds = pydicom.dcmread(io.BytesIO(blob))
            images.append(normalize_radiograph(ds, max_side=max_side))
            del ds.PixelData
            datasets.append(ds)
        decoded = time.perf_counter()
        inputs, geometries = classifier.preprocess(images)
        prepared = time.perf_counter()
        _, predictions = classifier.predict_arrays(inputs, geometries)
        done = time.perf_counter()
        if not captures:
            return decoded - start, prepared - decoded, done - prepared
        for k, (ds, image, p) in enumerate(zip(datasets, images, predictions, strict=True)):
            p = p if p.assessed else _stand_in(p, image, thresholds)
            scale = (int(ds.Columns) / image.shape[1], int(ds.Rows) / image.shape[0])
            capture = build_secondary_capture(
                ds, image, [f.scaled(*scale) for f in p.findings],
                label=sc_label(p, thresholds[p.body_part]),
                series_instance_uid=BENCH_SERIES_UID, sop_instance_uid=f"{BENCH_SERIES_UID}.{k}",
                instance_number=k + 1, algorithm=classifier.algorithm)
            encode_file(capture)
        captured = time.perf_counter()
        return decoded - start, prepared - decoded, done - prepared, captured - done

    run()  # warm-up: decoder plugins, ONNX Runtime's first call
    for _ in range(repeat):
        times = run()
        for key, seconds in zip(steps, times, strict=True):
            steps[key].append(1000 * seconds / n)
        totals.append(n / sum(times))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    mode = "with secondary captures" if captures else "classification only"
    report.figure(f"whole path (DICOM bytes to probabilities), {syntax}, "
                  f"{first.Rows}x{first.Columns}, {mode} (rendered at {max_side} px or more)",
                  "images/s", totals, part="whole_path", syntax=syntax, captures=captures,
                  max_side=max_side)
    for key, samples in steps.items():
        report.figure(f"  {syntax}, {mode}: {key} per image", "ms/image", samples,
                      higher_is_better=False, part="step", syntax=syntax, step=key,
                      captures=captures)
    print(f"  whole path {syntax:12s} {mode:23s}: "
          f"{common.summarize(totals)['median']:.2f} img/s ("
          + ", ".join(f"{k} {common.summarize(v)['median']:.0f} ms" for k, v in steps.items())
          + ")", flush=True)


def plot(report: common.Report) -> Any:
    fig, axes = common.new_plot(1, 2, width=6.5)
    ax = axes[0][0]
    configs = sorted({f.labels["config"] for f in report.find(part="network")})
    batches = sorted({f.labels["batch"] for f in report.find(part="network")})
    groups = [f"{c}\nbatch {b}" for c in configs for b in batches]
    series = {}
    for backend in BACKENDS:
        figs = [next(iter(report.find(part="network", config=c, backend=backend, batch=b)),
                     None) for c in configs for b in batches]
        if any(figs):
            series[BACKEND_LABEL[backend]] = figs
    common.plot_bars(ax, groups, series, "images/s")
    ax.set_title("Two-stage network alone, no flip averaging")
    ax = axes[0][1]
    syntaxes = [s for s in SYNTAXES if report.find(part="whole_path", syntax=s)]
    bottom = np.zeros(len(syntaxes))
    for step in ("decode", "preprocess", "network", "capture"):
        values = np.array([common.summarize(report.find(part="step", syntax=s, step=step,
                                                          captures=True)[0]
                                            .samples)["median"] for s in syntaxes])
        ax.bar(syntaxes, values, bottom=bottom, label=step)
        bottom += values
    for i, s in enumerate(syntaxes):
        rate = common.summarize(report.find(part="whole_path", syntax=s, captures=True)[0]
                                .samples)["median"]
        ax.annotate(f"{rate:.1f} img/s", (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("ms per image")
    ax.legend(fontsize=8)
    ax.set_title("Whole path, shipped bundle as served (with SCs)")
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=common.usable_cores(),
                   help="intra-op threads of both backends (default: usable cores)")
    p.add_argument("--images", type=int, default=None,
                   help="images per timed run of the network alone (default 64, --quick 4)")
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes (default 1 8 32, --quick 4)")
    p.add_argument("--files", type=int, default=None,
                   help="radiographs per whole-path run (default 8, --quick 2)")
    args = p.parse_args(argv)
    args.out = args.out or common.default_out(args.quick)
    # As `ossa serve` sets the process: pydicom does not validate values as it reads or sets
    # them, and films reuse the buffers freed by the previous ones.
    configure_logging("WARNING")
    keep_freed_memory()
    import torch

    torch.set_num_threads(args.threads)
    repeat = args.repeat or (1 if args.quick else 5)
    images = args.images or (4 if args.quick else 64)
    args.batches = args.batches or ([4] if args.quick else list(BATCHES))
    n_files = args.files or (2 if args.quick else 8)
    rows, columns = (300, 250) if args.quick else (3000, 2500)
    report = common.Report("inference", "Inference: ONNX Runtime vs PyTorch, and DICOM bytes "
                           "to probabilities", args.quick)
    report.parameters = {
        "threads": args.threads, "batches": args.batches, "images_per_run": images,
        "repeat": repeat, "flip_averaging_network_alone": False,
        "whole_path": {"files": n_files, "rows": rows, "columns": columns,
                       "whole_path_repeat": max(1, repeat - 2)},
        "onnxruntime_providers": ["CPUExecutionProvider"], "torch_threads": args.threads,
    }
    report.notes += [
        "Network alone: every image goes through stage 1 and one stage-2 network (routing "
        "forced), no flip averaging; backends alternate repeat by repeat on the same inputs, "
        f"with a {SETTLE_S} s pause before each timed call (spinning worker threads); a "
        f"timed call runs up to {images} images, fewer (whole batches) where it would take "
        f"over {MAX_CALL_S} s (labels.images_per_call).",
        "fracatlas (shipped, ONNX only): PyTorch runs the same architecture with untrained "
        "weights built from the manifest; paper: untrained MobileNetV2 x1.0 at 224 px, the "
        "same weights in both backends.",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        shipped = open_bundle(SHIPPED_BUNDLE)
        paper = open_bundle(paper_bundle(Path(tmp)))
        for config, info, untrained in (("fracatlas", shipped, True), ("paper", paper, False)):
            network_alone(report, config, info,
                          runners(info, threads=args.threads, untrained_torch=untrained),
                          batches=args.batches, images=images, repeat=repeat)
    classifier = TwoStageClassifier.from_bundle(SHIPPED_BUNDLE, threads=args.threads,
                                                batch_size=32)
    report.parameters["whole_path"]["flip_averaging"] = classifier.bundle.manifest.flip_tta
    report.parameters["whole_path"]["bundle"] = classifier.algorithm.version
    report.parameters["whole_path"]["file_bytes"] = {}
    for syntax, uid in SYNTAXES.items():
        files = write_corpus(args.work, f"inference-{syntax}-{rows}x{columns}-{n_files}",
                             count=n_files, rows=rows, columns=columns, per_study=n_files,
                             modality="DX", syntax=uid, distinct_pixels=n_files)
        report.parameters["whole_path"]["file_bytes"][syntax] = sizes(files) // len(files)
        for captures in (True, False):
            whole_path(report, classifier, files, syntax, max(1, repeat - 2), captures=captures)
    report.notes.append(
        f"Whole path: the shipped bundle as `ossa serve` runs it (flip averaging "
        f"{'on' if classifier.bundle.manifest.flip_tta else 'off'}, as its manifest says), "
        f"{n_files} radiographs per run classified together; JPEG-LS and JPEG 2000 are "
        "lossless (encoded by pyjpegls and OpenJPEG). Each image is rendered at the size the "
        "service asks for: reduced by an integer factor to a longest side of at least the "
        "secondary capture's RENDER_SIDE (with captures, which are then built and encoded, "
        "one per film) or the network's input size (without); "
        "JPEG 2000 decoded at that reduced resolution (Pillow's OpenJPEG reduce), JPEG-LS by "
        "pyjpegls, uncompressed read in place by pydicom.")
    report.notes.append("The process is set as `ossa serve` sets it: pydicom validates no "
                        "values as it reads or sets them, and glibc keeps freed film-sized "
                        "buffers for the next film (worker.allocator).")
    report.notes.append(f"onnxruntime {ort.__version__}, torch {torch.__version__}, "
                        f"{args.threads} threads each.")
    report.write(args.out, plot)


if __name__ == "__main__":
    main()
