"""``dip restore`` over many inputs: worker processes, torchrun/SLURM ranks, claims, the
manifest, resuming after a kill, and skipping complete outputs.

The processes are the real command on 19x23 images with the real preset for a few steps (a
worker or rank is one process of one thread), so each takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_image, write_png
from PIL import Image

from dip_lightning.cli import main
from dip_lightning.restore_parallel import OutputFolder, Share, cluster_share, take_share

HEIGHT, WIDTH = 19, 23


def noisy_folder(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        image = smooth_image(HEIGHT, WIDTH, seed=index).astype(np.float64)
        image = np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8)
        paths.append(write_png(folder / f"img{index}.png", image))
    return paths


def environment(temp: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for key in ("PYTHONWARNINGS", "RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    env.update(extra)
    return env


def dip_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dip_lightning", "restore", *args]


def manifest(out: Path) -> dict[str, dict[str, object]]:
    """The manifest's entries keyed by output name."""
    entries = json.loads((out / "manifest.json").read_text())["inputs"]
    return {Path(entry["output"]).name: entry for entry in entries}


def leftovers(out: Path, temp: Path) -> list[str]:
    """Claims, temporary files and temporary run folders left behind."""
    found = [p.name for p in out.iterdir() if ".tmp" in p.name]
    claims = out / ".dip-restore" / "claims"
    if claims.exists():
        found += [f"claims/{p.name}" for p in claims.iterdir()] or ["claims/"]
    found += [p.name for p in (out / ".dip-restore" / "records").iterdir() if ".tmp" in p.name]
    found += [p.name for p in temp.iterdir() if p.name.startswith("dip-restore-")]
    return found


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        return image.size


@pytest.fixture
def temp(tmp_path: Path) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


def test_two_torchrun_ranks_restore_each_input_once(tmp_path: Path, temp: Path) -> None:
    """Two processes with the environment torchrun gives its ranks share the sorted inputs
    (rank r takes r, r + 2, ...): every input is restored once, by the rank of its share,
    and the manifest both ranks rebuild lists all five."""
    sources = noisy_folder(tmp_path / "in", 5)
    out = tmp_path / "out"
    base = {
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29555",
        "TORCHELASTIC_RUN_ID": "dip-test",
    }
    ranks = []
    for rank in (0, 1):
        env = environment(temp, **base, RANK=str(rank), LOCAL_RANK=str(rank), ROLE_RANK=str(rank))
        command = dip_command(str(tmp_path / "in"), "-o", str(out), "--max-steps", "3", "--quiet")
        ranks.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    errors = [process.communicate(timeout=300)[1] for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0], errors
    for rank, (err, count) in enumerate(zip(errors, (3, 2), strict=True)):
        summary = f"rank {rank} of 2: {count} restored, 0 skipped, 0 failed of {count} inputs"
        assert summary in err, err
    entries = manifest(out)
    assert sorted(entries) == [p.name for p in sources]
    for index, source in enumerate(sources):
        entry = entries[source.name]
        assert entry["status"] == "restored" and entry["rank"] == index % 2
        assert entry["input"] == str(source) and entry["steps"] == 3
        assert size_of(out / source.name) == (WIDTH, HEIGHT)
    assert json.loads((out / "manifest.json").read_text())["counts"]["restored"] == 5
    assert leftovers(out, temp) == []


def test_a_killed_run_is_finished_by_the_same_command(tmp_path: Path, temp: Path) -> None:
    """SIGKILL to ``dip restore --workers 2`` while it fits: the rerun skips the outputs
    written (not fitted again: the same files), restores the others, and leaves every output
    whole, the manifest complete, and no claim or temporary file."""
    sources = noisy_folder(tmp_path / "in", 5)
    out = tmp_path / "out"
    command = dip_command(
        str(tmp_path / "in"), "-o", str(out), "--workers", "2", "--max-steps", "40", "--quiet"
    )
    run = subprocess.Popen(
        command,
        env=environment(temp),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    claims = out / ".dip-restore" / "claims"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and run.poll() is None:
            written = [p for p in sources if (out / p.name).exists()]
            fitting = [
                c for c in (claims.glob("*.claim") if claims.is_dir() else []) if c.stat().st_size
            ]
            if written and fitting and len(written) < len(sources):
                break
            time.sleep(0.05)
        assert run.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    before = {
        p.name: (os.stat(out / p.name).st_ino, os.stat(out / p.name).st_mtime_ns)
        for p in sources
        if (out / p.name).exists()
    }
    assert 0 < len(before) < len(sources)
    again = subprocess.run(
        command, env=environment(temp), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    entries = manifest(out)
    assert sorted(entries) == [p.name for p in sources]
    for source in sources:
        path = out / source.name
        assert size_of(path) == (WIDTH, HEIGHT)
        if source.name in before:  # written before the kill: kept as it was
            assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns) == before[source.name]
            assert entries[source.name]["status"] == "skipped"
        else:
            assert entries[source.name]["status"] == "restored"
    restored = len(sources) - len(before)
    summary = f"{restored} restored, {len(before)} skipped, 0 failed of {len(sources)} inputs"
    assert summary in again.stderr
    assert leftovers(out, temp) == []


def test_a_bad_input_among_many_with_workers(tmp_path: Path, temp: Path) -> None:
    sources = noisy_folder(tmp_path / "in", 2)
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "out"
    command = dip_command(
        str(tmp_path / "in"), "-o", str(out), "--workers", "2", "--max-steps", "3", "--quiet"
    )
    done = subprocess.run(
        command, env=environment(temp), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    reason = (
        f"cannot read image: {bad}: not a recognised image file; check that it is a valid, "
        "complete image file (PNG, JPEG, TIFF, ...)"
    )
    assert f"error: {bad}: {reason}" in lines
    assert lines[-2:] == [
        f"2 restored, 0 skipped, 1 failed of 3 inputs; manifest {out / 'manifest.json'}",
        "error: 1 of 3 inputs failed",
    ]
    assert "Traceback" not in done.stderr
    entries = manifest(out)
    assert entries["broken.png"]["status"] == f"failed: {reason}"
    assert [entries[p.name]["status"] for p in sources] == ["restored", "restored"]
    assert not (out / "broken.png").exists()
    assert leftovers(out, temp) == []


def test_workers_change_nothing_but_the_thread_count(tmp_path: Path, temp: Path) -> None:
    """With the same threads per fit (``--threads 1``), two workers write the same bytes as
    one: the worker processes, claims and hand-outs do not touch a fit's arithmetic."""
    sources = noisy_folder(tmp_path / "in", 3)
    written = {}
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        command = dip_command(
            str(tmp_path / "in"), "-o", str(out), "--workers", workers, "--threads", "1",
            "--max-steps", "12", "--quiet",
        )  # fmt: skip
        done = subprocess.run(
            command, env=environment(temp), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        written[workers] = {p.name: (out / p.name).read_bytes() for p in sources}
        if workers == "2":  # each worker was handed an input at the start
            assert {e.get("worker") for e in manifest(out).values()} == {0, 1}
    assert written["1"] == written["2"]


def test_the_fit_still_running_takes_the_cores_of_a_worker_that_ran_out_of_inputs(
    tmp_path: Path, temp: Path
) -> None:
    """Two workers, one good input and one that fails at once: once the failing one's worker
    has nothing left to do and has exited, the fit still running computes with the whole
    pool's threads (the manifest's ``threads``, the count the fit ended with)."""
    from dip_lightning.restore_parallel import default_threads

    noisy_folder(tmp_path / "in", 1)
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    command = dip_command(
        str(tmp_path / "in"), "-o", str(out), "--workers", "2", "--max-steps", "100",
        "--patience", "1000", "--quiet",
    )  # fmt: skip
    done = subprocess.run(
        command, env=environment(temp), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    entries = manifest(out)
    assert entries["broken.png"]["status"].startswith("failed: cannot read image")
    assert entries["img0.png"]["steps"] == 100
    assert entries["img0.png"]["threads"] == 2 * default_threads(2)


# ------------------------------------------------------------------ in one process


@pytest.fixture
def tiny_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real presets with a network small enough for the tests."""
    import dip_lightning.restore as restore

    original = restore.fit_arguments

    def small(cfg, job, run_dir):  # type: ignore[no-untyped-def]
        return [
            *original(cfg, job, run_dir),
            "--model.init_args.net.init_args.channels_down=8",
            "--model.init_args.net.init_args.channels_up=8",
            "--model.init_args.net.init_args.channels_skip=2",
            "--model.init_args.net.init_args.levels=2",
        ]

    monkeypatch.setattr(restore, "fit_arguments", small)


def run(args: list[str]) -> int:
    try:
        main(["restore", *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.usefixtures("tiny_presets")
def test_complete_outputs_are_skipped_and_overwrite_redoes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun skips what is done and says so; --overwrite fits again; a file of another
    size, or no image, at an output is refused and left alone; the image an interrupted fit
    wrote is redone."""
    noisy_folder(tmp_path / "in", 3)
    out = tmp_path / "out"
    fast = ["--max-steps", "3", "--quiet"]
    assert run([str(tmp_path / "in"), "-o", str(out), *fast]) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith("3 restored, 0 skipped")
    first = manifest(out)
    mtimes = {name: os.stat(out / name).st_mtime_ns for name in first}

    assert run([str(tmp_path / "in"), "-o", str(out), *fast]) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith("0 restored, 3 skipped")
    second = manifest(out)
    assert {name: os.stat(out / name).st_mtime_ns for name in second} == mtimes
    for name, entry in second.items():  # the details of the run that restored it are kept
        assert entry["status"] == "skipped"
        assert entry["restored_at"] == first[name]["restored_at"]
        assert entry["selected_step"] == first[name]["selected_step"]

    Image.new("RGB", (5, 4)).save(out / "img1.png")  # not this input's restoration
    (out / "img2.png").write_bytes(b"keep me")
    assert run([str(tmp_path / "in"), "-o", str(out), *fast]) == 2
    err = capsys.readouterr().err
    assert (
        f"error: {tmp_path / 'in' / 'img1.png'}: {out / 'img1.png'} exists and is not a "
        f"restored image of {tmp_path / 'in' / 'img1.png'} (5x4, not 23x19); pass --overwrite "
        "to replace it"
    ) in err.splitlines()
    assert "(not an image)" in err and (out / "img2.png").read_bytes() == b"keep me"
    assert manifest(out)["img1.png"]["status"].startswith("failed: ")  # type: ignore[union-attr]

    # the best-so-far image of an interrupted fit is redone by the next run
    state = OutputFolder(out)
    from dip_lightning.restore_parallel import Outcome

    state.write_record(
        Outcome(str(tmp_path / "in" / "img0.png"), str(out / "img0.png"), "interrupted")
    )
    assert run([str(tmp_path / "in"), "-o", str(out), "--overwrite", *fast]) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith("3 restored, 0 skipped")
    assert all(size_of(out / name) == (WIDTH, HEIGHT) for name in mtimes)
    state.write_record(
        Outcome(str(tmp_path / "in" / "img0.png"), str(out / "img0.png"), "interrupted")
    )
    assert run([str(tmp_path / "in"), "-o", str(out), *fast]) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith("1 restored, 2 skipped")
    assert manifest(out)["img0.png"]["status"] == "restored"


@pytest.mark.usefixtures("tiny_presets")
def test_one_input_whose_output_is_complete_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (source,) = noisy_folder(tmp_path / "in", 1)
    out = tmp_path / "out.png"
    assert run([str(source), "-o", str(out), "--max-steps", "3"]) == 0
    capsys.readouterr()
    before = out.read_bytes()
    assert run([str(source), "-o", str(out), "--max-steps", "3"]) == 0
    assert capsys.readouterr().err == (f"{source}: {out} exists; skipped (--overwrite redoes it)\n")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.png"]  # no state


@pytest.mark.usefixtures("tiny_presets")
def test_a_folder_of_clean_references_scores_each_input(tmp_path: Path) -> None:
    sources = noisy_folder(tmp_path / "in", 2)
    clean = tmp_path / "clean"
    clean.mkdir()
    for index, source in enumerate(sources):
        write_png(clean / source.name, smooth_image(HEIGHT, WIDTH, seed=index))
    out = tmp_path / "out"
    assert (
        run(
            [
                str(tmp_path / "in"),
                "-o",
                str(out),
                "--clean",
                str(clean),
                "--quiet",
                "--max-steps",
                "3",
            ]
        )
        == 0
    )
    for entry in manifest(out).values():
        assert isinstance(entry["psnr"], float) and isinstance(entry["ssim"], float)
    (clean / sources[1].name).unlink()
    assert run([str(tmp_path / "in"), "-o", str(out), "--clean", str(clean)]) == 2


def test_a_claim_is_exclusive_and_a_dead_holders_is_taken_over(tmp_path: Path, temp: Path) -> None:
    """A live holder's claim is refused to everyone else; the claim of a process killed
    while it held one is taken over, and the run folder it named is removed."""
    out = tmp_path / "out"
    folder = OutputFolder(out)
    held = folder.claim(out / "a.png")
    assert held is not None and folder.claim(out / "a.png") is None
    held.release()
    again = folder.claim(out / "a.png")
    assert again is not None
    again.release()

    run_dir = temp / "dip-restore-dead"
    run_dir.mkdir()
    script = (
        "import os, sys, time; from pathlib import Path\n"
        "from dip_lightning.restore_parallel import OutputFolder\n"
        f"claim = OutputFolder(Path({str(out)!r})).claim(Path({str(out / 'b.png')!r}))\n"
        f"claim.note(run={str(run_dir)!r}); print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=environment(temp)
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert folder.claim(out / "b.png") is None  # alive: refused
    finally:
        holder.kill()
        holder.wait()
    # what the dead holder left half-written: its output and its record; another output's
    # temporary file and the manifest's (written under the manifest's lock) are not the claim's
    records = out / ".dip-restore" / "records"
    records.mkdir(parents=True)
    half = [out / ".b.0123abcd.tmp.png", records / ".b.png.89abcdef.tmp.json"]
    other = out / ".b.x.01234567.tmp.png"
    stale_manifest = out / ".manifest.deadbeef.tmp.json"
    for path in (*half, other, stale_manifest):
        path.write_bytes(b"half")
    taken = folder.claim(out / "b.png")
    assert taken is not None and taken.stale is not None and taken.stale["run"] == str(run_dir)
    assert not run_dir.exists()
    assert [p.exists() for p in (*half, other, stale_manifest)] == [False, False, True, True]
    taken.release()
    folder.sweep()
    assert not (out / ".dip-restore" / "claims").exists()
    folder.write_manifest()
    assert not stale_manifest.exists() and (out / "manifest.json").is_file()


def test_the_share_of_each_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun's and srun's variables, read through Lightning's cluster environments."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "TORCHELASTIC_")) or key in ("RANK", "WORLD_SIZE"):
            monkeypatch.delenv(key)
    assert cluster_share() is None
    slurm = {
        "SLURM_NTASKS": "6",
        "SLURM_PROCID": "4",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "2",
        "SLURM_JOB_NAME": "restore",
        "SLURM_NTASKS_PER_NODE": "2",
    }
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert cluster_share() == Share(4, 6, 1, 2, "slurm")
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # an salloc shell: not a launch
    assert cluster_share() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # torchrun inside SLURM comes first
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    assert cluster_share() == Share(1, 2, 0, 1, "torchrun")
    names = [f"{i}.png" for i in range(7)]
    shares = [take_share(names[::-1], Share(r, 3), key=str) for r in range(3)]
    assert sorted(name for share in shares for name in share) == names
    assert shares[1] == ["1.png", "4.png"]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_terminal_shows_the_overall_bar(tmp_path: Path, temp: Path, workers: int) -> None:
    """In a terminal: one bar of the images done and their ETA, with the fit's own bar (one
    worker) or what each worker is on (several)."""
    import fcntl
    import pty
    import struct
    import termios

    noisy_folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    command = dip_command(
        str(tmp_path / "in"), "-o", str(out), "--max-steps", "3", "--workers", str(workers)
    )
    terminal, stdout = pty.openpty()
    fcntl.ioctl(stdout, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    process = subprocess.Popen(
        command, stdout=stdout, stderr=subprocess.PIPE, env=environment(temp), text=True
    )
    os.close(stdout)
    chunks = []
    while True:
        try:
            data = os.read(terminal, 65536)
        except OSError:  # the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(terminal)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    shown = b"".join(chunks).decode(errors="replace")
    assert "images: 100%" in shown and "2/2 [" in shown
    if workers == 1:
        assert "restoring: " in shown and "best -, patience 200" in shown
    else:
        assert "restoring: " not in shown and "w0 img" in shown
