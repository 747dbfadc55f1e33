"""Seed experiments: each a set of ``dip fit`` runs, a CSV and PNG plots.

    dip experiment NAME [--out DIR] [--size tiny|cpu|gpu] [--image PATH] [--images DIR]
    python -m dip_lightning.experiments NAME ...

Every run is a fit of the experiment's config (``configs/experiments/NAME.yaml``, a valid
``dip fit`` config: ``dip fit --config experiments/NAME`` runs its base case) with the variant's
settings given as command-line overrides to the same parser ``dip fit`` uses. The runs go to
``OUT/runs/<label>`` (TensorBoard events, ``restored.png``, ``metrics.json``); the experiment
writes ``OUT/NAME.csv`` and ``OUT/NAME*.png``. The plots need matplotlib (the ``plots`` extra).
Run again into the same ``OUT``, an experiment reuses the runs that finished (an interrupted
experiment continues where it stopped).

``--size`` scales the image, the network and the steps: ``cpu`` (the default) finishes in at
most 15 minutes on a 2-core CPU; ``gpu`` is paper-sized (512-pixel images, 128-channel skip
network, thousands of steps); ``tiny`` (32 pixels, 8 channels, a few steps) only checks that
the experiment runs. Images are centre-cropped to the size (never upscaled).

Each experiment is a module of this package, named after it, that defines ``EXPERIMENT``
(an :class:`~dip_lightning.experiments.runner.Experiment`: its one-line description, its
function and its steps per size); :mod:`~dip_lightning.experiments.runner` finds them, runs
their fits and holds the CSV and plot helpers. A new experiment is such a module and its
``configs/experiments/NAME.yaml``. The experiments, in order:

* :mod:`~dip_lightning.experiments.fitting_curves` -- MSE per step for a natural image, the
  same with noise, its pixels shuffled, and uniform noise.
* :mod:`~dip_lightning.experiments.spectral_bias` -- inpainting: FBC per band and PSNR, without
  and with each control of the spectral bias.
* :mod:`~dip_lightning.experiments.mask_ratio` -- random-pixel inpainting at 10% .. 90% missing.
* :mod:`~dip_lightning.experiments.skip_ablation` -- skips at every level, at levels 3 and 4,
  none, and a U-Net; on inpainting and denoising.
* :mod:`~dip_lightning.experiments.sensitivity` -- denoising: one setting varied at a time.
* :mod:`~dip_lightning.experiments.structural_feedback` -- denoising of the CBM3D images
  without and with the structural-feedback loss for each ``s_t``.

>>> list(EXPERIMENTS)  # doctest: +NORMALIZE_WHITESPACE
['fitting_curves', 'spectral_bias', 'mask_ratio', 'skip_ablation', 'sensitivity',
 'structural_feedback']
"""

from __future__ import annotations

from dip_lightning.experiments.fitting_curves import fitting_targets
from dip_lightning.experiments.runner import (
    RECORD,
    SHARED,
    SIZES,
    Context,
    Experiment,
    Recorder,
    RunResult,
    Size,
    center_crop,
    config_path,
    discover,
    load_rgb,
    main,
    parser,
    prepared_image,
    pyplot,
    run_experiment,
    run_fit,
    save_figure,
    save_rgb,
    skip_net_args,
    summary_row,
    write_csv,
)
from dip_lightning.experiments.sensitivity import NORMAL_SCALE_MATCHED, sensitivity_grid
from dip_lightning.experiments.skip_ablation import skip_variants
from dip_lightning.experiments.spectral_bias import SPECTRAL_VARIANTS
from dip_lightning.experiments.structural_feedback import (
    CBM3D,
    FEEDBACK_VARIANTS,
    feedback_images,
)

#: Every experiment by name, in order (see :func:`~dip_lightning.experiments.runner.discover`).
EXPERIMENTS: dict[str, Experiment] = discover()

__all__ = [
    "CBM3D",
    "EXPERIMENTS",
    "FEEDBACK_VARIANTS",
    "NORMAL_SCALE_MATCHED",
    "RECORD",
    "SHARED",
    "SIZES",
    "SPECTRAL_VARIANTS",
    "Context",
    "Experiment",
    "Recorder",
    "RunResult",
    "Size",
    "center_crop",
    "config_path",
    "discover",
    "feedback_images",
    "fitting_targets",
    "load_rgb",
    "main",
    "parser",
    "prepared_image",
    "pyplot",
    "run_experiment",
    "run_fit",
    "save_figure",
    "save_rgb",
    "sensitivity_grid",
    "skip_net_args",
    "skip_variants",
    "summary_row",
    "write_csv",
]
