"""FBCLogger: the event files hold the bands, the layout and the heatmap; spectral bias shows."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from conftest import write_png
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from dip_lightning.callbacks import FBCLogger
from dip_lightning.callbacks.fbc import colormap, fbc_heatmap
from dip_lightning.data import SingleImageDataModule
from dip_lightning.networks import SkipNet
from dip_lightning.tasks import DenoisingDIP, InpaintingDIP

SmallNet = partial(SkipNet, channels_down=16, channels_up=16, channels_skip=4, levels=3)


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions run fastest on one thread (and do not fight other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def textured_png(tmp_path: Path) -> Path:
    """A 48x48 RGB crop of skimage's astronaut: edges and texture in every band."""
    image = skimage.data.astronaut()[100:196:2, 150:246:2]
    return write_png(tmp_path / "astronaut.png", np.ascontiguousarray(image))


def fit(tmp_path: Path, module, data, steps: int, fbc: FBCLogger) -> Trainer:
    trainer = Trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        logger=TensorBoardLogger(tmp_path, name="runs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=10,
        callbacks=[fbc],
    )
    trainer.fit(module, datamodule=data)
    return trainer


def events(trainer: Trainer) -> EventAccumulator:
    accumulator = EventAccumulator(
        str(trainer.log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    header, *rows = path.read_text().strip().splitlines()
    return header.split(","), np.array([[float(v) for v in row.split(",")] for row in rows])


def test_event_files_hold_bands_layout_and_heatmap(tmp_path: Path, textured_png: Path) -> None:
    data = SingleImageDataModule(image=str(textured_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=8)
    fbc = FBCLogger(every_n_steps=4, num_bands=5)
    trainer = fit(tmp_path, module, data, 10, fbc)
    accumulator = events(trainer)
    tags = accumulator.Tags()
    for group in ("fbc", "fbc_clean"):
        for k in range(5):
            steps = [event.step for event in accumulator.Scalars(f"{group}/band_{k}")]
            assert steps == [4, 8, 10]  # every 4 steps and the last one
        assert f"{group}/heatmap" in tags["images"]
    (config,) = accumulator.Tensors("custom_scalars__config__")
    assert accumulator.SummaryMetadata("custom_scalars__config__").plugin_data.plugin_name == (
        "custom_scalars"
    )
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    (category,) = layout.category
    charts = {chart.title.split(":")[0]: list(chart.multiline.tag) for chart in category.chart}
    assert charts == {
        "fbc": [f"^fbc/band_{k}$" for k in range(5)],
        "fbc_clean": [f"^fbc_clean/band_{k}$" for k in range(5)],
    }
    (heatmap,) = accumulator.Images("fbc/heatmap")
    assert heatmap.step == 10 and heatmap.width > heatmap.height > 5 * 16
    header, values = read_csv(Path(trainer.log_dir) / "fbc.csv")
    assert header[:2] == ["step", "fbc/band_0"] and header[-1] == "fbc_clean/band_4"
    assert values[:, 0].tolist() == [4, 8, 10]
    logged = [event.value for event in accumulator.Scalars("fbc/band_2")]
    np.testing.assert_allclose(values[:, 3], logged, rtol=1e-5)
    assert np.all((values[:, 1:] >= 0) & (values[:, 1:] <= 1))


def test_spectral_bias_shows_in_a_denoising_fit(tmp_path: Path, textured_png: Path) -> None:
    """Against the noisy observation, band 0 passes 0.9 before the last band passes 0.5."""
    data = SingleImageDataModule(image=str(textured_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=8, lr=0.01)
    fbc = FBCLogger(every_n_steps=10, against=["target"])
    fit(tmp_path, module, data, 250, fbc)
    steps = np.array(fbc.steps)
    values = np.array(fbc.values["target"])  # (steps, bands)
    assert "clean" not in fbc.values
    low = steps[values[:, 0] > 0.9]
    high = steps[values[:, -1] > 0.5]
    assert len(low) > 0, values[:, 0]
    assert len(high) == 0 or low[0] < high[0], (low, high)
    assert values[-1, 0] > values[-1, -1] + 0.3


def test_inpainting_compares_the_masked_output(tmp_path: Path, textured_png: Path) -> None:
    data = SingleImageDataModule(image=str(textured_png), missing_ratio=0.5)
    module = InpaintingDIP(net=SmallNet, input_depth=8)
    fbc = FBCLogger(every_n_steps=3)
    fit(tmp_path, module, data, 3, fbc)
    expected = fbc.measure(module)
    assert set(expected) == {"target", "clean"}
    from dip_lightning.metrics import frequency_band_correspondence

    masked = module.degradation(module.last_output)
    torch.testing.assert_close(
        expected["target"], frequency_band_correspondence(masked, module.observation)
    )


def test_the_module_adds_one_unless_the_trainer_has_one(tmp_path: Path, textured_png) -> None:
    data = SingleImageDataModule(image=str(textured_png), noise_sigma=25)
    mine = FBCLogger(every_n_steps=2, num_bands=3)
    trainer = fit(tmp_path, DenoisingDIP(net=SmallNet, input_depth=8), data, 2, mine)
    assert [c for c in trainer.callbacks if isinstance(c, FBCLogger)] == [mine]
    header, _ = read_csv(Path(trainer.log_dir) / "fbc.csv")
    assert header[-1] == "fbc_clean/band_2"


def test_heatmap_puts_band_zero_at_the_bottom() -> None:
    values = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, float("nan")]])
    image = fbc_heatmap(values, [5, 10, 15], cell_height=4, min_width=6, labels=False)
    assert image.shape == (3, 8, 6)
    torch.testing.assert_close(image[:, -1, 0], colormap(torch.tensor(1.0)))
    torch.testing.assert_close(image[:, 0, 0], colormap(torch.tensor(0.0)))
    torch.testing.assert_close(image[:, 0, -1], torch.full((3,), 0.5))  # NaN: gray
    labelled = fbc_heatmap(values, [5, 10, 15])
    assert labelled.shape[0] == 3 and labelled.shape[2] > 320
    assert float(labelled.min()) >= 0 and float(labelled.max()) <= 1


def test_state_survives_a_checkpoint() -> None:
    fbc = FBCLogger()
    fbc.steps, fbc.values = [50, 100], {"target": [[1.0] * 5, [0.5] * 5]}
    other = FBCLogger()
    other.load_state_dict(fbc.state_dict())
    assert other.csv_text() == fbc.csv_text()
    assert other.csv_text().splitlines()[2].startswith("100,0.5,")
