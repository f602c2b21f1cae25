"""Procedural radiograph phantom written in the exact MURA-v1.1 layout.

MURA (Rajpurkar et al. 2017) cannot be redistributed, so tests, demos and benchmarks use this
phantom instead: the same loader (:mod:`models.datasets.data`) serves the phantom and a real
MURA-v1.1
copy. Each of MURA's seven bone types has its own anatomy-like geometry, built from
vectorized signed-distance primitives (tapered capsules, ellipses, boxes) with cortical rims,
inside a soft-tissue envelope. Densities are summed along the beam and turned into an image
with Beer-Lambert attenuation, so bone is bright on a dark background, as in MURA.

A further class, ``OTHER`` (not assessed in :data:`~models.serving.taxonomy.MURA_TAXONOMY`), holds
out-of-scope anatomy so that a model learns to say "not mine": each ``XR_OTHER`` study shows
one of :data:`OTHER_KINDS` (chest, pelvis, knee, skull, spine, abdomen), drawn from the study's
seed, with the same view randomisation. OTHER studies are always labelled normal (0), with no
finding; their kind is recorded in ``phantom_findings.csv``.

An abnormal study shows one finding in every one of its images (each image is another view of
the same anatomy, framed so that the finding is in the field of view): a fracture (a jagged
gap, a displaced and angulated fragment, soft-tissue swelling and, mostly, a fluffy callus),
expansile lytic lesions with a sclerotic margin or dense blastic ones, or metal hardware (a
plate with screws, wires or a nail), which is very bright. Findings are deliberately
conspicuous, so that a small network trained for minutes on a CPU learns them: the phantom is
much easier than MURA. Views vary in rotation, mirroring, foreshortening, scale and framing;
exposures vary in attenuation, gamma, blur, noise and heel-effect shading; some images carry a
collimation border or a bright side marker, whatever their label.

Each image's findings come with their boxes in its pixels (:attr:`PhantomStudy.boxes`; how each
kind is boxed: :mod:`.rendering`): each fracture site, each lesion and each metal implant (MURA
calls hardware abnormal) the image shows. :func:`write_phantom` writes them for every image as
COCO ``MURA-v1.1/boxes.json`` (:mod:`models.datasets.boxes`, read by
:func:`models.datasets.data.load_boxes`), a
normal study's images with none. Boxes are computed from the drawn geometry and draw no random
number, so images are the same with or without them.

Split rule (per class, see :func:`split_sizes`): of ``studies`` studies, the validation split
gets ``ceil(studies * valid_fraction)`` (at least one, and at least one is left to train when
``studies >= 2``), the train split the rest. Within each split, ``round(n * abnormal_fraction)``
studies of an assessed class are abnormal, in a seeded random order (none of OTHER). Patients
hold one or two studies, never span splits, and are numbered from ``patient00001`` across all
classes and both splits.

Everything is deterministic for a given seed: each study is rendered from its own seed
``(seed, class index, split index, study index)``, independently of the others, and a seed's
normal and abnormal renderings differ only by the finding (see :func:`render_study`).

Modules: :mod:`.geometry` (primitives), :mod:`.anatomy` (the seven bone types), :mod:`.other`
(out-of-scope anatomy), :mod:`.findings`, :mod:`.rendering` (views, :func:`render_study`) and
:mod:`.dataset` (the MURA layout and the ``ossa phantom`` command line). Nothing here imports
torch.
"""

from models.datasets.phantom.dataset import (
    FINDINGS_CSV,
    get_args_parser,
    main,
    split_sizes,
    write_phantom,
)
from models.datasets.phantom.findings import FINDINGS
from models.datasets.phantom.other import OTHER_KINDS
from models.datasets.phantom.rendering import (
    PHANTOM_CLASSES,
    PhantomConfig,
    PhantomStudy,
    render_study,
)

__all__ = [
    "FINDINGS",
    "FINDINGS_CSV",
    "OTHER_KINDS",
    "PHANTOM_CLASSES",
    "PhantomConfig",
    "PhantomStudy",
    "get_args_parser",
    "main",
    "render_study",
    "split_sizes",
    "write_phantom",
]
