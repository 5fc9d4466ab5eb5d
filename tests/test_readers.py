"""The archive readers: HDF5 (with a catalog), NetCDF, Zarr and PNG frames made from the same arrays
give the npz path's processed data byte for byte; each bad archive exits 2 with one line naming
the file and what is expected, and writes nothing."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ok, run_script, snapshot
from regimen.core import runs

XARRAY = importlib.util.find_spec("xarray") is not None
needs_xarray = pytest.mark.skipif(not XARRAY, reason="the xarray extra: pip install -r requirements-xarray.txt")
N, T, H, W, C = 6, 7, 5, 4, 3


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    """Inputs that PNG holds exactly (whole numbers 0-255, RGB) and labels 0-2."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(N, T, H, W, C)).astype(np.uint8)
    y = rng.integers(0, 3, size=(N, T, H, W)).astype(np.uint8)
    return {"X": x, "Y": y}


def config(tmp: Path, name: str, data: dict) -> str:
    raw = {"data": {"root": str(tmp / "data"), "T_window": 3, "stride": 2, "num_classes": 3,
                    "splits": [0.5, 0.25, 0.25], **data}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def write_npz(folder: Path, a: dict) -> dict:
    np.savez(folder / "all.npz", X=a["X"].astype(np.float32), Y=a["Y"].astype(np.int64))
    return {"dataset": "npz", "path": str(folder / "all.npz")}


def write_hdf5_with_catalog(folder: Path, a: dict) -> dict:
    """Two SEVIR-like files (events along N, frames last: NHWT, labels NHWT) and a catalog of
    their events in order."""
    (folder / "vil").mkdir()
    rows = []
    for part, events in (("a", range(0, 4)), ("b", range(4, N))):
        with h5py.File(folder / "vil" / f"{part}.h5", "w") as f:
            f["vil"] = a["X"][list(events)].transpose(0, 2, 3, 4, 1)[:, :, :, :, :]  # N H W C T
            f["mask"] = a["Y"][list(events)].transpose(0, 2, 3, 1)
        rows += [{"file_name": f"vil/{part}.h5", "file_index": i, "time_utc": f"2019-06-{10 + e:02d} 12:00:00"}
                 for i, e in enumerate(events)]
    with open(folder / "CATALOG.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file_name", "file_index", "time_utc"])
        writer.writeheader()
        writer.writerows(rows)
    return {"dataset": "hdf5", "path": str(folder), "format": "NHWCT", "inputs": "vil", "labels": "mask",
            "catalog": {"path": str(folder / "CATALOG.csv"), "file": "file_name", "index": "file_index",
                        "time": "time_utc"}}


def write_netcdf(folder: Path, a: dict) -> dict:
    import xarray as xr
    ds = xr.Dataset({"reflectivity": (("event", "time", "y", "x", "band"), a["X"].astype(np.float32)),
                     "classes": (("event", "time", "y", "x"), a["Y"])},
                    coords={"time": np.arange(T) * 300.0})
    ds.to_netcdf(folder / "radar.nc", engine="h5netcdf")
    return {"dataset": "xarray", "path": str(folder / "radar.nc"), "inputs": "reflectivity", "labels": "classes",
            "dims": {"sequence": "event", "channel": "band"}}


def write_zarr(folder: Path, a: dict) -> dict:
    """One Zarr store per sequence, dims in another order than the reader's, with a time coordinate."""
    import xarray as xr
    (folder / "stores").mkdir()
    for n in range(N):
        times = np.datetime64("2020-01-01T00:00") + np.arange(T) * np.timedelta64(5, "m") + n * np.timedelta64(1, "D")
        ds = xr.Dataset({"X": (("band", "t", "lat", "lon"), a["X"][n].transpose(3, 0, 1, 2).astype(np.float32)),
                         "Y": (("t", "lat", "lon"), a["Y"][n].astype(np.int64))}, coords={"t": times})
        ds.to_zarr(folder / "stores" / f"day{n}.zarr", consolidated=False)
    return {"dataset": "xarray", "path": str(folder / "stores"),
            "dims": {"time": "t", "y": "lat", "x": "lon", "channel": "band"}}


def write_frames(folder: Path, a: dict) -> dict:
    """HKO-7's layout: a folder of RGB PNG frames per sequence, label masks in a parallel folder."""
    for n in range(N):
        for kind, array in (("frames", a["X"][n]), ("masks", a["Y"][n])):
            sequence = folder / kind / f"seq{n:02d}"
            sequence.mkdir(parents=True)
            for t in range(T):
                Image.fromarray(array[t]).save(sequence / f"{t:03d}.png")
    return {"dataset": "frames", "path": str(folder / "frames"), "labels": str(folder / "masks")}


def store_bytes(tmp: Path) -> tuple[str, dict[str, bytes]]:
    """The one processed folder under tmp's data root: its data version and store files."""
    (folder,) = (tmp / "data" / "processed").iterdir()
    meta = json.loads((folder / "meta.json").read_text())
    return meta["data_version"], {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))}


WRITERS = [pytest.param(write_hdf5_with_catalog, id="hdf5-catalog"),
           pytest.param(write_netcdf, id="netcdf", marks=needs_xarray),
           pytest.param(write_zarr, id="zarr", marks=needs_xarray),
           pytest.param(write_frames, id="png-frames")]


@pytest.mark.parametrize("write", WRITERS)
def test_every_reader_gives_the_npz_paths_processed_data_byte_for_byte(tmp_path, arrays, write):
    reference, archive = tmp_path / "npz", tmp_path / "archive"
    reference.mkdir(), archive.mkdir()
    ok("tools/preprocess.py", "--config", config(reference, "npz", write_npz(reference, arrays)))
    ok("tools/preprocess.py", "--config", config(archive, "archive", write(archive, arrays)))
    version, files = store_bytes(archive)
    assert (version, files) == store_bytes(reference)
    assert set(files) == {f"{s}.{a}.npy" for s in runs.SPLITS for a in ("X", "Y", "windows")}


def test_a_catalog_records_each_events_time_and_file(tmp_path, arrays):
    data = write_hdf5_with_catalog(tmp_path, arrays)
    ok("tools/preprocess.py", "--config", config(tmp_path, "c", data))
    (folder,) = (tmp_path / "data" / "processed").iterdir()
    meta = json.loads((folder / "meta.json").read_text())
    listed = sorted((s["index"], s["name"], s["time"]) for split in runs.SPLITS for s in meta["sequences"][split])
    assert listed[4] == (4, f"{tmp_path / 'vil' / 'b.h5'}: 'vil' event 0", "2019-06-14T12:00:00")


def test_hdf5_and_npz_give_the_same_training_metrics(tmp_path, arrays):
    """Phase 1 reads only the store, so the metrics of the two paths are the same numbers."""
    metrics = []
    for name, write in (("npz", write_npz), ("hdf5", write_hdf5_with_catalog)):
        folder = tmp_path / name
        folder.mkdir()
        path = config(folder, name, write(folder, arrays))
        raw = yaml.safe_load(Path(path).read_text())
        raw.update({"training": {"epochs": 1}, "model": {"convlstm": {"hidden_sizes": [4, 4]}}})
        Path(path).write_text(yaml.safe_dump(raw))
        ok("tools/preprocess.py", "--config", path)
        ok("train_convlstm.py", "--config", path, "--save", str(folder / "run"))
        done = json.loads((folder / "run" / "metrics.json").read_text())["train_convlstm"]
        metrics.append({split: done[split] for split in ("val", "test")})
    assert metrics[0] == metrics[1]


# --------------------------------------------------------------------------- bad archives


def hdf5_file(tmp: Path, arrays: dict, **datasets) -> Path:
    path = tmp / "one.h5"
    with h5py.File(path, "w") as f:
        for name, value in {"X": arrays["X"].astype(np.float32), "Y": arrays["Y"], **datasets}.items():
            if value is not None:
                f[name] = value
    return path


def bad_catalog(tmp: Path, arrays: dict, row: dict) -> dict:
    data = write_hdf5_with_catalog(tmp, arrays)
    with open(tmp / "CATALOG.csv", "a", newline="") as handle:
        csv.DictWriter(handle, ["file_name", "file_index", "time_utc"]).writerow(row)
    return data


def nan_inputs(tmp: Path, arrays: dict) -> dict:
    x = arrays["X"].astype(np.float32)
    x[5, 2, 1, 1, 0] = np.nan
    path = hdf5_file(tmp, arrays, X=x)
    return {"dataset": "hdf5", "path": str(path)}


def short_labels(tmp: Path, arrays: dict) -> dict:
    data = write_frames(tmp, arrays)
    (tmp / "masks" / "seq03" / "006.png").unlink()
    return data


def label_of_other_shape(tmp: Path, arrays: dict) -> dict:
    data = write_frames(tmp, arrays)
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(tmp / "masks" / "seq01" / "002.png")
    return data


def unsorted_time(tmp: Path, arrays: dict) -> dict:
    import xarray as xr
    times = np.array([0, 300, 600, 900, 600, 1500, 1800], dtype=np.float64)
    xr.Dataset({"X": (("n", "time", "y", "x", "c"), arrays["X"].astype(np.float32)),
                "Y": (("n", "time", "y", "x"), arrays["Y"])}, coords={"time": times}).to_netcdf(
        tmp / "radar.nc", engine="h5netcdf")
    return {"dataset": "xarray", "path": str(tmp / "radar.nc"), "dims": {"sequence": "n", "channel": "c"}}


def netcdf_without(tmp: Path, arrays: dict) -> dict:
    import xarray as xr
    xr.Dataset({"X": (("n", "time", "y", "x", "c"), arrays["X"].astype(np.float32))}).to_netcdf(
        tmp / "radar.nc", engine="h5netcdf")
    return {"dataset": "xarray", "path": str(tmp / "radar.nc"), "dims": {"sequence": "n", "channel": "c"}}


def timed_hdf5(tmp: Path, arrays: dict, times: np.ndarray, **data) -> dict:
    """An HDF5 file whose dataset `time` holds `times`, split by time."""
    path = hdf5_file(tmp, arrays, time=times)
    return {"dataset": "hdf5", "path": str(path), "times": "time", "split_by": "time", **data}


def hourly(n: int = N, t: int = T) -> np.ndarray:
    """`[n, t]` ISO times: event i starts on day i, frames an hour apart."""
    days = np.datetime64("2022-03-01T00:00") + np.arange(n)[:, None] * np.timedelta64(1, "D")
    return (days + np.arange(t)[None] * np.timedelta64(1, "h")).astype("datetime64[s]").astype(str).astype("S")


def garbage(tmp: Path, name: str) -> Path:
    (tmp / name).write_bytes(b"not an archive at all" * 10)
    return tmp / name


BAD = {
    "hdf5 file missing": (lambda t, a: {"dataset": "hdf5", "path": str(t / "gone.h5")},
                          "data.path: {t}/gone.h5 not found"),
    "hdf5 dataset missing": (lambda t, a: {"dataset": "hdf5", "path": str(hdf5_file(t, a)), "inputs": "vil"},
                             "{t}/one.h5: no dataset 'vil' (inputs, data.inputs); found: X, Y"),
    "hdf5 wrong rank": (lambda t, a: {"dataset": "hdf5", "path": str(hdf5_file(t, a)), "format": "NTHW"},
                        "{t}/one.h5: dataset 'X' has shape (6, 7, 5, 4, 3); data.format NTHW expects rank 4"),
    "hdf5 labels of another shape": (
        lambda t, a: {"dataset": "hdf5", "path": str(hdf5_file(t, a, Y=a["Y"][:, :, :4]))},
        "{t}/one.h5: dataset 'Y' (labels) has shape (6, 7, 4, 4); expected (6, 7, 5, 4) (axes NTHW"),
    "hdf5 unreadable": (lambda t, a: {"dataset": "hdf5", "path": str(garbage(t, "junk.h5"))},
                        "{t}/junk.h5: not a readable HDF5 file"),
    "catalog file missing": (lambda t, a: bad_catalog(t, a, {"file_name": "vil/c.h5", "file_index": 0,
                                                              "time_utc": "2019-07-01 00:00"}),
                             "{t}/CATALOG.csv line 8: file {t}/vil/c.h5 not found"),
    "catalog index missing": (lambda t, a: bad_catalog(t, a, {"file_name": "vil/b.h5", "file_index": 2,
                                                               "time_utc": "2019-07-01 00:00"}),
                              "{t}/CATALOG.csv line 8: index 2, but {t}/vil/b.h5 holds 2 event(s) along N of 'vil'"),
    "catalog bad time": (lambda t, a: bad_catalog(t, a, {"file_name": "vil/b.h5", "file_index": 1,
                                                          "time_utc": "yesterday"}),
                         "{t}/CATALOG.csv line 8: time 'yesterday' is not an ISO 8601 date and time"),
    "NaN in the inputs": (nan_inputs, "{t}/one.h5: 'X' event 5: inputs hold 1 NaN/Inf value(s), the first at "
                                      "frame index (2, 1, 1, 0)"),
    "frames: fewer label frames": (short_labels, "{t}/masks/seq03: 6 label frames for the 7 frames of "
                                                 "{t}/frames/seq03; expected one label frame per frame"),
    "frames: label of another shape": (label_of_other_shape, "{t}/masks/seq01/002.png: a label frame of shape "
                                                             "(6, 4); expected (5, 4) as the frames"),
    "frames: not a folder": (lambda t, a: {"dataset": "frames", "path": str(garbage(t, "x.png"))},
                             "data.path: {t}/x.png is not a folder"),
    "split by time without times": (lambda t, a: {**write_npz(t, a), "split_by": "time"},
                                    "data.split_by = 'time': {t}/all.npz sequence 0 has no time; expected a time "
                                    "coordinate 'time'"),
    "unknown split time": (lambda t, a: timed_hdf5(t, a, hourly(), split_times=["2022-03-03", "the fifth"]),
                           "data.split_times[1] = 'the fifth': not a time; expected an ISO 8601 date and time"),
    "split time leaves test empty": (
        lambda t, a: timed_hdf5(t, a, hourly(), split_times=["2022-03-03", "2030-01-01"]),
        "split 'test' gets no window of 3 frames between 2030-01-01T00:00:00 and None; the data's times run "
        "from 2022-03-01T00:00:00 to 2022-03-06T06:00:00"),
    "times of another shape": (lambda t, a: timed_hdf5(t, a, hourly(t=T + 1)),
                               "{t}/one.h5: dataset 'time' (times) has shape (6, 8); expected (6, 7) (axes NT of 'X')"),
    "times not increasing": (lambda t, a: timed_hdf5(t, a, hourly()[:, ::-1]),
                             "{t}/one.h5: dataset 'time' event 0: time 2022-03-01T06:00:00 is followed by "
                             "2022-03-01T05:00:00 (index 1); expected times that never decrease"),
    "xarray time not increasing": pytest.param(
        unsorted_time, "{t}/radar.nc: time coordinate 'time' does not increase: 900.0 is followed by 600.0 "
                       "(index 4); expected increasing times", marks=needs_xarray),
    "xarray variable missing": pytest.param(
        netcdf_without, "{t}/radar.nc: no variable 'Y' (labels, data.labels); found: X", marks=needs_xarray),
    "xarray wrong dims": pytest.param(
        lambda t, a: {**netcdf_without(t, a), "dims": {"sequence": "n"}, "labels": "next_frame",
                      "task": "regression"},
        "{t}/radar.nc: variable 'X' has dims ('n', 'time', 'y', 'x', 'c'); expected ('n', 'time', 'y', 'x') in any "
        "order", marks=needs_xarray),
    "xarray unreadable": pytest.param(
        lambda t, a: {"dataset": "xarray", "path": str(garbage(t, "junk.nc"))},
        "{t}/junk.nc: not a readable NetCDF file", marks=needs_xarray),
}


@pytest.mark.parametrize("make, expected", [case if hasattr(case, "marks") else pytest.param(*case)
                                            for case in BAD.values()], ids=list(BAD))
def test_a_bad_archive_exits_2_with_one_line_and_writes_nothing(tmp_path, arrays, make, expected):
    path = config(tmp_path, "bad", make(tmp_path, arrays))
    before = snapshot(tmp_path)
    done = run_script("tools/preprocess.py", "--config", path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert expected.format(t=tmp_path) in line
    assert snapshot(tmp_path) == before and not (tmp_path / "data").exists()


def test_without_the_xarray_extra_the_reader_names_the_requirements_file(tmp_path, monkeypatch):
    import sys

    from regimen.core.config_file import load_config
    from regimen.core.errors import UserError
    from regimen.data.readers import open_reader

    monkeypatch.setitem(sys.modules, "xarray", None)  # import xarray now raises ImportError
    (tmp_path / "radar.nc").write_bytes(b"")
    data = load_config(config(tmp_path, "x", {"dataset": "xarray", "path": str(tmp_path / "radar.nc")})).data
    with pytest.raises(UserError, match="data.dataset: xarray needs the optional extra: pip install -r "
                                        "requirements-xarray.txt"):
        open_reader(data, 0)
