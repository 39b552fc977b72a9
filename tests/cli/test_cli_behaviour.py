"""The ``hcsflow`` command behaves like the tools users know: version, help, exit codes,
one-line errors with their reason, refusals before work, run directories understood."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hcsflow
import hcsflow.testing
from hcsflow.cli import build_parser, main
from hcsflow.cli._main import exit_code_for
from hcsflow.errors import CorruptDataError, StepExecutionError, UsageError
from hcsflow.testing import make_plate

INPROCESS = ["--executor", "inprocess"]


def _cli(
    *args: str, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed command in a fresh interpreter, as a user runs it."""
    exe = Path(sys.executable).with_name("hcsflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hcsflow.cli"]
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


def _pipeline(tmp_path: Path, body: str, name: str = "pipe.py") -> str:
    path = tmp_path / name
    path.write_text(
        "from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, VFSConfig\n" + body
    )
    return str(path)


SMOOTH = "pipeline = [FunctionStep(func='gaussian_filter', sigma=1.0)]\n"


@pytest.fixture
def plate(tmp_path: Path) -> str:
    return make_plate(tmp_path / "plate", 2, sites=1, size=64, seed=3).root


def test_version_names_the_package_and_where_it_is() -> None:
    out = _cli("--version")
    assert out.returncode == 0
    assert out.stdout.startswith(f"hcsflow {hcsflow.__version__} from ")
    assert str(Path(hcsflow.__file__).parent) in out.stdout and "Python 3." in out.stdout


@pytest.mark.parametrize("command", ["demo", "run", "info", "validate", "fsck", "functions"])
def test_every_subcommand_help_has_a_description_and_examples(command, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    usage, description = text.split("\n\n")[:2]
    assert usage.startswith(f"usage: hcsflow {command}")
    assert len(description.split()) >= 10  # a real sentence, not just the usage line
    assert "examples:\n  hcsflow " + command in text
    assert "--debug" in text


def test_help_states_defaults(capsys) -> None:
    for command in ("demo", "run"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: zarr)" in text or "else zarr)" in text
        assert "--workers N wells processed in parallel (default:" in text
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: demo-output)", "(default: 24)", "(default: 2)", "(default: 384)"):
        assert default in text


def test_usage_errors_exit_2(tmp_path) -> None:
    out = _cli("run", "pipe.py")
    assert out.returncode == 2 and "required" in out.stderr
    out = _cli("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr
    # demo writes a local folder: a URL is refused, not made into a folder named "s3:"
    out = _cli("demo", "--out", "s3://bucket/run", cwd=tmp_path)
    assert out.returncode == 2 and "'s3://bucket/run' is a URL" in out.stderr
    assert not any(tmp_path.iterdir())


def test_exit_code_table() -> None:
    assert exit_code_for(StepExecutionError("well A01 failed")) == 1
    assert exit_code_for(UsageError("bad")) == 2
    assert exit_code_for(CorruptDataError("bad", path="/x")) == 2
    assert exit_code_for(PermissionError(13, "denied")) == 2
    assert exit_code_for(ImportError("no dask")) == 2
    assert exit_code_for(KeyboardInterrupt()) == 130

    class Terminated(KeyboardInterrupt):
        exit_code = 143

    assert exit_code_for(Terminated()) == 143
    assert exit_code_for(ZeroDivisionError()) == 3


def test_a_syntax_error_in_the_pipeline_file_is_one_line_and_exit_2(tmp_path, plate) -> None:
    bad = _pipeline(tmp_path, "pipeline = [FunctionStep(func='gaussian_filter')\n", "bad.py")
    out = _cli("run", bad, plate, "--out", str(tmp_path / "o"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert f"pipeline file '{bad}', line 2: SyntaxError: '[' was never closed" in out.stderr
    debug = _cli("run", bad, plate, "--out", str(tmp_path / "o"), "--debug")
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert not (tmp_path / "o").exists()


def test_an_exception_in_the_pipeline_file_names_its_line(tmp_path, plate, capsys) -> None:
    pipe = _pipeline(tmp_path, "x = 1\npipeline = [FunctionStep(func=undefined_name)]\n")
    assert main(["run", pipe, plate, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"hcsflow run: error: pipeline file '{pipe}', line 3: "
        "NameError: name 'undefined_name' is not defined\n"
    )


def test_a_truncated_tiff_prints_the_decoders_reason(tmp_path, capsys) -> None:
    plate = make_plate(tmp_path / "plate", 2, sites=2, size=128, seed=1)
    broken = Path(plate.root) / "A01_s2_w1.tif"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    pipe = _pipeline(tmp_path, SMOOTH)
    rc = main(["run", pipe, plate.root, "--out", str(tmp_path / "o"), *INPROCESS])
    assert rc == 1
    lines = capsys.readouterr().err.splitlines()
    failed = [line for line in lines if line.startswith("hcsflow run: well A01 failed:")]
    assert len(failed) == 1
    assert "A01_s2_w1.tif" in failed[0]
    assert "failed to read" in failed[0] and "bytes, got" in failed[0]  # tifffile's reason
    assert "Traceback" not in "\n".join(lines)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert "Traceback" in manifest["wells"]["A01"]["traceback"]
    assert manifest["wells"]["A02"]["status"] == "ok"


def test_demo_refuses_an_existing_output_before_generating(tmp_path, monkeypatch, capsys) -> None:
    def must_not_run(*args, **kwargs):
        raise AssertionError("the plate was generated before --out was checked")

    monkeypatch.setattr(hcsflow.testing, "make_plate", must_not_run)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path / "notes"), "--overwrite"]) == 2
    assert "holds no hcsflow run" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{}")
    assert main(["demo", "--out", str(tmp_path / "run")]) == 2
    assert "holds a previous run; pass --overwrite" in capsys.readouterr().err
    (tmp_path / "cut" / ".hcsflow").mkdir(parents=True)
    (tmp_path / "cut" / ".hcsflow" / "run.json").write_text("{}")
    assert main(["demo", "--out", str(tmp_path / "cut")]) == 2
    assert "holds an interrupted run; pass --overwrite" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["demo", "--out", str(tmp_path / "file")]) == 2
    assert main(["demo", "--out", str(tmp_path / "x"), "--wells", "0"]) == 2
    assert "--wells must be between 1 and 96" in capsys.readouterr().err
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


def test_run_and_demo_default_to_an_ome_zarr_plate(tmp_path, plate, capsys) -> None:
    smooth = _pipeline(tmp_path, SMOOTH)
    assert main(["run", smooth, plate, "--out", str(tmp_path / "a"), *INPROCESS]) == 0
    assert (tmp_path / "a" / "images.zarr").is_dir() and not (tmp_path / "a" / "images").exists()
    # a config that does not set vfs: the command's default still applies
    workers = _pipeline(tmp_path, SMOOTH + "config = GlobalPipelineConfig(num_workers=1)\n", "w.py")
    assert main(["run", workers, plate, "--out", str(tmp_path / "b"), *INPROCESS]) == 0
    assert (tmp_path / "b" / "images.zarr").is_dir()
    # the file's own choice wins over the default, --backend over the file
    disk = _pipeline(
        tmp_path,
        SMOOTH + "config = GlobalPipelineConfig(vfs=VFSConfig(materialization_backend='disk'))\n",
        "d.py",
    )
    assert main(["run", disk, plate, "--out", str(tmp_path / "c"), *INPROCESS]) == 0
    assert (tmp_path / "c" / "images").is_dir() and not (tmp_path / "c" / "images.zarr").exists()
    cmd = ["run", disk, plate, "--out", str(tmp_path / "d"), "--backend", "zarr", *INPROCESS]
    assert main(cmd) == 0
    assert (tmp_path / "d" / "images.zarr").is_dir()
    assert build_parser().parse_args(["demo"]).backend == "zarr"


def test_validate_finds_the_plate_of_a_run_directory(tmp_path, plate, capsys) -> None:
    pipe = _pipeline(tmp_path, SMOOTH)
    assert main(["run", pipe, plate, "--out", str(tmp_path / "z"), *INPROCESS]) == 0
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "z")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "z" / "images.zarr") in out and "valid OME-Zarr plate" in out
    assert main(["validate", "--deep", str(tmp_path / "z")]) == 0
    cmd = ["run", pipe, plate, "--out", str(tmp_path / "t"), "--backend", "disk", *INPROCESS]
    assert main(cmd) == 0
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "t")]) == 2
    assert "written as TIFF files" in capsys.readouterr().err
    assert main(["validate", plate]) == 2
    assert "neither an OME-Zarr plate" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "nowhere")]) == 2


def test_validate_exits_1_for_a_broken_plate(tmp_path, plate, capsys) -> None:
    pipe = _pipeline(tmp_path, SMOOTH)
    assert main(["run", pipe, plate, "--out", str(tmp_path / "z"), *INPROCESS]) == 0
    (tmp_path / "z" / "images.zarr" / "A" / "2" / "zarr.json").write_text("{not json")
    assert main(["validate", str(tmp_path / "z")]) == 1


def test_ctrl_c_exits_130_with_one_line(tmp_path, plate) -> None:
    pipe = _pipeline(
        tmp_path,
        "def stop(stack):\n    raise KeyboardInterrupt\npipeline = [FunctionStep(func=stop)]\n",
    )
    out = _cli("run", pipe, plate, "--out", str(tmp_path / "o"), *INPROCESS)
    assert out.returncode == 130
    assert out.stderr == "hcsflow run: interrupted\n"


def test_sigint_during_a_demo_exits_130_without_a_traceback(tmp_path) -> None:
    exe = Path(sys.executable).with_name("hcsflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hcsflow.cli"]
    args = ["demo", "--out", str(tmp_path / "d"), "--wells", "96", *INPROCESS]
    proc = subprocess.Popen(
        [*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed before any work starts
        assert first.startswith("generating a synthetic plate: 96 wells")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["hcsflow demo: interrupted by SIGINT"]
    assert not (tmp_path / "d").exists()


def test_a_broken_pipe_is_quiet(tmp_path, plate) -> None:
    exe = Path(sys.executable).with_name("hcsflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hcsflow.cli"]
    read, write = os.pipe()
    os.close(read)  # nobody reads: the first write fails with EPIPE
    with os.fdopen(write, "w") as sink:
        proc = subprocess.run(
            [*cmd, "info", plate], stdout=sink, stderr=subprocess.PIPE, text=True, timeout=60
        )
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
    assert proc.returncode == 141


def test_output_inside_the_plate_is_refused(tmp_path, plate, capsys) -> None:
    pipe = _pipeline(tmp_path, SMOOTH)
    assert main(["run", pipe, plate, "--out", str(Path(plate) / "o"), *INPROCESS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hcsflow run: error: output directory") and err.count("\n") == 1


def test_an_unexpected_error_is_one_line_and_asks_for_debug(monkeypatch, capsys) -> None:
    import hcsflow.cli._info as info

    def boom(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(info, "info_command", boom)  # registered when main builds its parser
    assert main(["info", "."]) == 3
    err = capsys.readouterr().err
    assert err == (
        "hcsflow info: error: ZeroDivisionError: division by zero "
        "(an unexpected error; --debug shows where)\n"
    )
    assert main(["info", ".", "--debug"]) == 3
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    assert main(["--debug", "info", "."]) == 3
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_validate_reads_plates_and_runs_at_urls(tmp_path, plate, capsys) -> None:
    pipe = _pipeline(tmp_path, SMOOTH)
    assert main(["run", pipe, plate, "--out", str(tmp_path / "z"), *INPROCESS]) == 0
    capsys.readouterr()
    url = (tmp_path / "z").as_uri()
    assert main(["validate", url]) == 0
    out = capsys.readouterr().out
    assert "valid OME-Zarr plate" in out and str(tmp_path / "z" / "images.zarr") in out
    assert main(["validate", f"{url}/images.zarr", "--deep"]) == 0
    capsys.readouterr()
    assert main(["info", url]) == 0  # a file:// URL is the local run it names
    assert capsys.readouterr().out.split()[:3] == ["hcsflow", "run", str(tmp_path / "z")]
    (tmp_path / "z" / "images.zarr" / "A" / "2" / "zarr.json").write_text("{not json")
    assert main(["validate", url]) == 1
    assert main(["validate", (tmp_path / "nowhere").as_uri()]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["validate", "nosuchprotocol://x/y"]) == 2
    assert "cannot read 'nosuchprotocol://x/y'" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "z"), "--storage-options", "{}"]) == 2
    assert "for a PATH that is a URL" in capsys.readouterr().err


def test_validate_a_run_on_object_storage(tmp_path, plate, s3_bucket, capsys) -> None:
    import s3fs

    bucket, options = s3_bucket
    pipe = _pipeline(tmp_path, SMOOTH)
    assert main(["run", pipe, plate, "--out", str(tmp_path / "z"), *INPROCESS]) == 0
    disk = ["run", pipe, plate, "--out", str(tmp_path / "t"), "--backend", "disk", *INPROCESS]
    assert main(disk) == 0
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(tmp_path / "z"), f"{bucket}/z", recursive=True)
    fs.put(str(tmp_path / "t"), f"{bucket}/t", recursive=True)
    capsys.readouterr()
    opts = ["--storage-options", json.dumps(options)]
    assert main(["validate", f"{bucket}/z", *opts]) == 0
    assert "valid OME-Zarr plate" in capsys.readouterr().out
    assert main(["validate", f"{bucket}/t", *opts]) == 2
    assert "written as TIFF files" in capsys.readouterr().err
