"""Independent random streams from one seed.

Every random number of a fit comes from a generator of its own, seeded from ``model.seed`` (the
fit's streams) or ``data.seed`` (the observation's streams) by one rule: the seed of stream
``name`` is the first 64-bit word of NumPy's ``SeedSequence(seed mod 2**64,
spawn_key=(STREAMS[name],))``, the child that ``SeedSequence(seed).spawn`` would give at that
index. NumPy's seed sequence hashes the seed and the spawn key together, so the streams of one
seed, and those of neighbouring seeds (``model.seed``, ``model.seed + 1``, ... of a batched
fit), are statistically independent, and one stream's numbers do not reappear in another's.

The streams and their spawn keys (fixed: a fit made with a seed draws the same numbers in every
release that keeps this table):

===============  ====  ============  =======================================================
stream           key   seeded by     draws
===============  ====  ============  =======================================================
``weights``      0     model.seed    the network's initial weights (PyTorch's default init)
``input``        1     model.seed    the fixed input ``z``
``perturbation`` 2     model.seed    the fresh perturbation of ``z`` at every step
``holdout``      3     model.seed    the pixels held out of the data term
``bank``         4     model.seed    the noise bank (``model.perturbation: bank``)
``offsets``      5     model.seed    the bank's window offsets
``observation``  6     data.seed     the simulated degradation (noise, ...)
``mask``         7     data.seed     a random-pixel mask (``data.missing_ratio``)
``divergence``   8     model.seed    the probes of SURE's divergence (``model.loss: sure``)
===============  ====  ============  =======================================================

>>> stream_seed(0, "weights") != stream_seed(0, "input")
True
>>> int(stream_generator(0, "input").initial_seed()) == stream_seed(0, "input")
True
"""

from __future__ import annotations

import numpy as np
import torch

#: the spawn key of each stream; never renumber one (it would change every fit made with it)
STREAMS: dict[str, int] = {
    "weights": 0,
    "input": 1,
    "perturbation": 2,
    "holdout": 3,
    "bank": 4,
    "offsets": 5,
    "observation": 6,
    "mask": 7,
    "divergence": 8,
}


def stream_seed(seed: int, stream: str) -> int:
    """The 64-bit seed of ``stream`` for ``seed`` (see the module's rule)."""
    try:
        key = STREAMS[stream]
    except KeyError:
        raise ValueError(f"unknown random stream {stream!r}; one of {', '.join(STREAMS)}") from None
    sequence = np.random.SeedSequence(int(seed) % 2**64, spawn_key=(key,))
    return int(sequence.generate_state(1, np.uint64)[0])


def stream_generator(
    seed: int, stream: str, device: torch.device | str | None = None
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (the CPU by default) seeded for ``stream``."""
    generator = torch.Generator(device=device) if device is not None else torch.Generator()
    return generator.manual_seed(stream_seed(seed, stream))
