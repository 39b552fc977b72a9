"""The documented recipes run as pipelines: per-channel measurement inside nuclei, cells
grown from nuclei, library functions by name next to built-ins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from hcsflow.functions.synthetic import nuclei_image
from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, run_pipeline


@pytest.fixture(scope="module")
def two_channel_plate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    import tifffile

    root = tmp_path_factory.mktemp("plate")
    truth = {}
    for i, well in enumerate(("A01", "A02")):
        s = nuclei_image((128, 128), diameter=14.0, seed=60 + i)
        cyto = ndi.gaussian_filter((ndi.grey_dilation(s.labels, size=7) > 0) * 300.0, 1.5) + 60
        tifffile.imwrite(root / f"{well}_s1_w1.tif", s.image)
        tifffile.imwrite(root / f"{well}_s1_w2.tif", cyto.astype(np.uint16))
        truth[well] = s.count
    return root, truth


def _config() -> GlobalPipelineConfig:
    return GlobalPipelineConfig(num_workers=1, executor="inprocess")


def test_measure_every_channel_inside_the_nuclei_of_one(two_channel_plate, tmp_path) -> None:  # type: ignore[no-untyped-def]
    plate, truth = two_channel_plate
    step = FunctionStep(
        func=[("count_cells", {"method": "segment_nuclei", "reference": 1}), "measure_objects"],
        variable_components=("channel",),
    )
    result = run_pipeline([step], str(plate), str(tmp_path / "out"), _config())
    assert not result.failed
    counts = pd.read_csv(Path(result.output_dir) / result.plate_tables["cell_counts"])
    assert list(counts["channel"]) == [1, 1]
    for well, n in truth.items():
        found = int(counts.loc[counts["well"] == well, "cell_count"].iloc[0])
        assert abs(found - n) <= 0.2 * n
    table = pd.read_csv(Path(result.output_dir) / result.plate_tables["object_measurements"])
    per = table.groupby(["well", "channel"]).size().unstack()
    assert (per[1] == per[2]).all()  # every nucleus measured in both channels


def test_cells_grown_from_nuclei_and_library_functions(two_channel_plate, tmp_path) -> None:  # type: ignore[no-untyped-def]
    plate, _ = two_channel_plate
    steps = [
        FunctionStep(func="ndi.median_filter", size=3, name="denoise"),
        FunctionStep(
            func=[
                ("count_cells", {"method": "segment_nuclei", "reference": 1}),
                ("watershed_seeded", {"reference": 2}),
                ("measure_cells", {}),
            ],
            variable_components=("channel",),
        ),
    ]
    result = run_pipeline(steps, str(plate), str(tmp_path / "out"), _config())
    assert not result.failed, [w.error for w in result.failed]
    cells = pd.read_csv(Path(result.output_dir) / result.plate_tables["cell_measurements"])
    nuclei = pd.read_csv(Path(result.output_dir) / result.plate_tables["cell_counts"])
    assert len(cells) > 0
    per = cells.groupby(["well", "channel"]).size().unstack()
    assert (per[1] == per[2]).all()  # every cell measured in both channels
    # cells are larger than their nuclei
    assert cells["area"].median() > 1.5 * (np.pi * 7**2) * 0.5
    assert set(nuclei["well"]) == {"A01", "A02"}
