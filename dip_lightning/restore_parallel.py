"""``dip restore`` over many inputs: worker processes, cluster ranks, resumable output folders.

DIP fits are independent per image, so ``dip restore`` scales by running many at once:

* ``--workers N`` starts ``N`` worker processes (the ``spawn`` start method) that share the
  inputs: the parent hands each idle worker the next batch, so a worker that got a large image
  does not hold the others up. Each worker runs ``torch.set_num_threads(--threads)`` before any
  work (default: the machine's cores divided among the workers of the machine); with
  ``--device cuda`` worker ``i`` fits on GPU ``i`` mod the GPU count.
* Under a cluster launcher (torchrun, SLURM's ``srun``, LSF, MPI), detected through Lightning's
  cluster environments (:func:`cluster_share`), rank ``r`` of ``W`` takes inputs ``r, r + W,
  ...`` of the input list sorted by path; ``--workers`` then splits the rank's share on its
  machine. No process group is formed: each fit is a single-process fit.

An output folder is resumable and each input is restored once. Its hidden ``.dip-restore/``
folder holds:

* ``claims/<output name>.claim``: while a process works on an input it holds an exclusive
  ``fcntl.flock`` on this file (created if needed), so two processes never fit the same input,
  whichever command, rank or machine they belong to (on a shared file system with working
  locks). The file names the holder (host, pid) and its temporary run folder. A process that
  dies loses its lock with it, so its claim is stale: the next process takes it over, removes
  the dead process's run folder and fits the input; a run removes the stale claims it finds
  when it ends.
* ``records/<output name>.json``: one small record per input, written atomically by the process
  that handled it (see :data:`RECORD_KEYS`).
* ``manifest.lock``: the lock under which ``manifest.json`` is rebuilt.

``manifest.json`` in the output folder is rebuilt from all the records, under the lock and
atomically, after each input and when a run ends, so workers and ranks never lose one another's
updates. Its format::

    {
      "inputs": [
        {"input": "photos/a.png", "output": "restored/a.png", "status": "restored",
         "selected_step": 412, "steps": 612, "seconds": 83.2, "threads": 2, "psnr": 30.1,
         "ssim": 0.87,
         "restored_at": "2025-01-01T12:00:00+00:00", "host": "node1", "pid": 4242,
         "rank": 0, "worker": 1, "sha256": "..."},
        ...
      ],
      "counts": {"restored": 1, "skipped": 0, "failed": 0}
    }

one entry per output of the folder, sorted by output; ``status`` is ``restored`` (this run
restored it), ``skipped`` (its output was already complete: the entry keeps the details of the
run that restored it, when a record has them), ``failed: <reason>`` or ``interrupted`` (Ctrl-C
or SIGTERM wrote the best image so far; the next run redoes it). ``psnr``/``ssim`` only with
``--clean``; ``batch`` (the size of a batched fit) only with ``--batch-size``; ``threads``
(the CPU threads the fit ended with, more than ``--threads`` where the cores of finished
workers were handed to it) only for a fit on the CPU.

An existing output is *complete* when it reads as an image of the size the input restores to
and no record marks it ``interrupted``: outputs are written atomically, so a present file is
whole. Such an input is skipped (``--overwrite`` redoes it); a file of another size, or not an
image, is refused as not a restoration of the input.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dip_lightning.io_utils import atomic_write_json, temporaries_of

__all__ = [
    "RECORD_KEYS",
    "Claim",
    "Outcome",
    "OutputFolder",
    "Share",
    "cluster_share",
    "default_threads",
    "take_share",
]

log = logging.getLogger("dip_lightning")

#: The keys of a record taken from a fit's metrics, in the order written.
METRIC_KEYS = ("selected_step", "steps", "seconds", "threads", "psnr", "ssim", "batch")

#: The keys of a record (and of a manifest entry), in the order written; a record holds those
#: that apply.
RECORD_KEYS = (
    "input",
    "output",
    "status",
    *METRIC_KEYS,
    "restored_at",
    "host",
    "pid",
    "rank",
    "worker",
    "sha256",
)

#: The hidden state folder inside an output folder.
STATE = ".dip-restore"


# ------------------------------------------------------------------ cluster ranks


@dataclass(frozen=True)
class Share:
    """Which part of the inputs this process restores: rank ``rank`` of ``world`` (launched by
    ``launcher``), of which ``local_world`` run on this machine as local rank ``local_rank``."""

    rank: int
    world: int
    local_rank: int = 0
    local_world: int = 1
    launcher: str = "local"


def cluster_share() -> Share | None:
    """The rank of this process when a cluster launcher started it, as Lightning's cluster
    environments detect it (in Lightning's order: torchelastic, SLURM, LSF, MPI), else
    ``None``. Each fit of ``dip restore`` stays a single-process fit: the ranks only share the
    inputs.

    >>> import os
    >>> keys = ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    >>> saved = {key: os.environ.get(key) for key in keys}
    >>> os.environ.update(TORCHELASTIC_RUN_ID="job", RANK="3", WORLD_SIZE="4", LOCAL_RANK="1",
    ...                   LOCAL_WORLD_SIZE="2")
    >>> cluster_share()
    Share(rank=3, world=4, local_rank=1, local_world=2, launcher='torchrun')
    >>> for key, value in saved.items():
    ...     _ = os.environ.pop(key, None) if value is None else os.environ.update({key: value})
    """
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    class _SlurmRanks(SLURMEnvironment):
        """Lightning's SLURM environment without the checks of its DDP settings (``dip
        restore`` forms no process group, so ``srun -n 8`` is as good as
        ``--ntasks-per-node``)."""

        def __init__(self) -> None:
            pass

    candidates: list[tuple[str, Any, Callable[[], Any]]] = [
        ("torchrun", TorchElasticEnvironment, TorchElasticEnvironment),
        ("slurm", SLURMEnvironment, _SlurmRanks),
        ("lsf", LSFEnvironment, LSFEnvironment),
        ("mpi", MPIEnvironment, MPIEnvironment),
    ]
    from dip_lightning.errors import ConfigError

    for name, kind, make in candidates:
        try:
            with _quiet_warnings():
                found = bool(kind.detect())
        except Exception:
            found = False
        if not found:
            continue
        try:
            env = make()
            rank, world = int(env.global_rank()), int(env.world_size())
            local_rank = int(env.local_rank())
        except (KeyError, ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(f"cannot read this process's rank from {name}: {exc}") from None
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"{name} gives rank {rank} of {world} processes; check its launch")
        return Share(rank, world, local_rank, _local_world(name, world), name)
    return None


def _local_world(launcher: str, world: int) -> int:
    """How many ranks run on this machine (to share its cores), as the launcher tells."""
    keys = {
        "torchrun": ("LOCAL_WORLD_SIZE",),
        "slurm": ("SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"),
        "mpi": ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"),
    }.get(launcher, ())
    for key in keys:
        text = os.environ.get(key, "").split("(")[0].split(",")[0]
        if text.isdigit() and int(text) > 0:
            return min(int(text), world)
    return 1


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def take_share(items: list[Any], share: Share | None, key: Callable[[Any], str]) -> list[Any]:
    """The items rank ``share.rank`` restores: every ``world``-th of ``items`` sorted by
    ``key``, from the rank's own index (all of them without a share).

    >>> take_share(list("edcba"), Share(1, 2), key=str)
    ['b', 'd']
    >>> take_share(list("edcba"), None, key=str)
    ['e', 'd', 'c', 'b', 'a']
    """
    if share is None:
        return list(items)
    return sorted(items, key=key)[share.rank :: share.world]


def default_threads(workers: int, local_processes: int = 1) -> int:
    """CPU threads per worker when ``--threads`` is not given: this machine's cores (those
    this process may use) divided among ``workers`` times ``local_processes``, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers * local_processes))


# ------------------------------------------------------------------ claims


@dataclass
class Claim:
    """An input this process holds: the open claim file with its exclusive lock."""

    path: Path
    fd: int
    #: what the claim file said before this process took it over from a dead one
    stale: dict[str, Any] | None = None

    def note(self, **values: Any) -> None:
        """Write the holder (host, pid) and ``values`` (its run folder) into the claim file."""
        text = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), **values})
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self) -> None:
        """Remove the claim file and let the lock go."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)


#: Tries of a claim's lock before it counts as held: a sweep (or a look at a claim that is
#: being released) holds one for a moment, a fit for its whole length.
_CLAIM_TRIES = 6


def _lock_claim(path: Path) -> Claim | None:
    """Take ``path``'s lock without waiting; ``None`` when a live process holds it."""
    tries = 0
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # no claims folder (yet, or a sweep removed it)
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            tries += 1
            if tries >= _CLAIM_TRIES:  # a holder for longer than a sweep's glance: alive
                return None
            time.sleep(0.05)
            continue
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder finished and removed it meanwhile: try again
    text = os.pread(fd, 4096, 0).decode(errors="replace")
    stale = None
    if text.strip():
        try:
            stale = json.loads(text)
        except ValueError:
            stale = {}
    return Claim(path, fd, stale)


def _remove_stale_run(stale: dict[str, Any] | None) -> None:
    """Remove the temporary run folder a dead process named in its claim (on this host)."""
    if not stale or stale.get("host") != socket.gethostname():
        return
    run = stale.get("run")
    if isinstance(run, str) and Path(run).name.startswith("dip-restore-"):
        shutil.rmtree(run, ignore_errors=True)


# ------------------------------------------------------------------ the output folder


@dataclass
class Outcome:
    """What became of one input."""

    input: str
    output: str
    #: ``restored``, ``skipped``, ``failed``, ``interrupted`` or ``busy`` (another process
    #: holds it)
    status: str
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    #: the one ``error:`` line to print (after ``error: ``), if any
    error: str | None = None
    #: True for an error that is not the user's (a bug): the exit status is 1
    internal: bool = False

    @property
    def manifest_status(self) -> str:
        return f"failed: {self.reason}" if self.status == "failed" else self.status


class OutputFolder:
    """The output folder's claims, records and manifest (see the module's docstring)."""

    def __init__(self, folder: Path, rank: int | None = None, worker: int | None = None):
        self.folder = folder
        self.state = folder / STATE
        self.rank = rank
        self.worker = worker

    def _key(self, output: Path) -> str:
        return output.name

    def claim(self, output: Path) -> Claim | None:
        """Hold ``output``'s input for this process; ``None`` when another live process
        holds it. A dead process's claim is taken over and its run folder removed."""
        claim = _lock_claim(self.state / "claims" / f"{self._key(output)}.claim")
        if claim is not None and claim.stale is not None:
            _remove_stale_run(claim.stale)
        if claim is not None:
            claim.note()
            # only the claim's holder writes the output and its record: a temporary file of
            # either is a killed process's half-written one
            for path in (*temporaries_of(output), *temporaries_of(self.record_path(output))):
                with contextlib.suppress(OSError):
                    path.unlink()
        return claim

    def record_path(self, output: Path) -> Path:
        return self.state / "records" / f"{self._key(output)}.json"

    def record(self, output: Path) -> dict[str, Any] | None:
        """The record of ``output``, ``None`` without a readable one."""
        try:
            value = json.loads(self.record_path(output).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def write_record(self, outcome: Outcome) -> None:
        """Write the record of ``outcome`` (a skipped input keeps the details of the run that
        restored its output, when its record has them)."""
        output = Path(outcome.output)
        values: dict[str, Any] = {}
        if outcome.status == "skipped":
            old = self.record(output) or {}
            if old.get("status") in ("restored", "skipped") and old.get("sha256") == _sha256(
                output
            ):
                values.update(old)
        else:
            metrics = outcome.metrics
            for key in METRIC_KEYS:
                if metrics.get(key) is not None:
                    values[key] = metrics[key]
            if outcome.status in ("restored", "interrupted"):
                values["restored_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                values["host"] = socket.gethostname()
                values["pid"] = os.getpid()
                if self.rank is not None:
                    values["rank"] = self.rank
                if self.worker is not None:
                    values["worker"] = self.worker
                if output.is_file():
                    values["sha256"] = _sha256(output)
        values.update(input=outcome.input, output=outcome.output, status=outcome.manifest_status)
        ordered = {key: values[key] for key in RECORD_KEYS if key in values}
        atomic_write_json(self.record_path(output), ordered)

    def interrupted(self, output: Path) -> bool:
        """Whether ``output`` is the best-so-far image of an interrupted fit (to redo)."""
        record = self.record(output)
        return bool(
            record
            and record.get("status") == "interrupted"
            and record.get("sha256") == _sha256(output)
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state / "manifest.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def write_manifest(self) -> Path:
        """Rebuild ``manifest.json`` from every record, under the lock, atomically."""
        path = self.folder / "manifest.json"
        with self._locked():
            for stale in temporaries_of(path):  # a killed writer's, under the same lock
                with contextlib.suppress(OSError):
                    stale.unlink()
            entries = []
            for record in sorted((self.state / "records").glob("*.json")):
                try:
                    value = json.loads(record.read_text())
                except (OSError, ValueError):
                    continue  # a record is written atomically: only a foreign file fails
                if isinstance(value, dict) and "status" in value:
                    entries.append(value)
            entries.sort(key=lambda entry: str(entry.get("output")))
            counts = {"restored": 0, "skipped": 0, "failed": 0}
            for entry in entries:
                status = str(entry["status"]).split(":")[0]
                counts[status] = counts.get(status, 0) + 1
            atomic_write_json(path, {"inputs": entries, "counts": counts})
        return path

    def sweep(self) -> None:
        """Remove the claims of dead processes (and their run folders), then the empty
        claims folder."""
        claims = self.state / "claims"
        if not claims.is_dir():
            return
        for path in sorted(claims.glob("*.claim")):
            claim = _lock_claim(path)
            if claim is not None:
                _remove_stale_run(claim.stale)
                claim.release()
        with contextlib.suppress(OSError):
            claims.rmdir()


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# ------------------------------------------------------------------ workers


def _die_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM when its parent dies (a killed ``dip restore``
    leaves no worker fitting on)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def worker_main(
    index: int,
    cfg: Any,
    inputs: list[Path],
    folder: Path | None,
    setup: dict[str, Any],
    conn: Any,
    restore_jobs: Callable[..., list[Outcome]],
    output_context: Callable[[Any], contextlib.AbstractContextManager[Any]],
    threads_value: Any = None,
) -> None:
    """A worker process: set its threads (and follow ``threads_value``, the count the parent
    raises when cores fall idle, through :class:`~dip_lightning.callbacks.threads.ThreadShare`),
    then restore each batch the parent sends
    (``None``: stop) with ``restore_jobs(cfg, batch, inputs, state)`` inside
    ``output_context(cfg)``, answering with ``("start", outputs)`` and then the
    :class:`Outcome` of each input. The two functions are the caller's (pickled by reference),
    so this module needs nothing of the command that uses it."""
    _die_with_parent()
    import torch

    torch.set_num_threads(int(setup["threads"]))
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)

    if threads_value is not None:
        from dip_lightning.callbacks.threads import share_threads

        share_threads(threads_value)
    _library_warnings_off()
    state = OutputFolder(folder, setup.get("rank"), index) if folder is not None else None
    with output_context(cfg):
        while True:
            try:
                batch = conn.recv()
            except (EOFError, OSError):
                return
            if batch is None:
                return
            conn.send(("start", [str(job.output) for job in batch]))
            try:
                outcomes = restore_jobs(cfg, batch, inputs, state)
            except KeyboardInterrupt:
                return
            except BaseException as exc:
                from lightning.pytorch.utilities.exceptions import SIGTERMException

                if isinstance(exc, SIGTERMException):
                    return
                text = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
                outcomes = [_failed(job, text) for job in batch]
            for outcome in outcomes:
                conn.send(outcome)


@dataclass
class _Worker:
    index: int
    process: Any
    conn: Any
    busy: list[Any] = field(default_factory=list)
    since: float = 0.0
    stopping: bool = False
    #: the thread count shared with the worker's fits (``None``: its own count, fixed)
    threads: Any = None


def _failed(job: Any, why: str) -> Outcome:
    """The outcome of ``job`` when no worker could restore it (not the user's mistake)."""
    return Outcome(str(job.input), str(job.output), "failed", why, error=why, internal=True)


def run_workers(
    cfg: Any,
    batches: list[list[Any]],
    inputs: list[Path],
    folder: Path | None,
    setups: list[dict[str, Any]],
    report: Callable[[Outcome], None],
    status: Callable[[str], None] | None,
    restore_jobs: Callable[..., list[Outcome]],
    output_context: Callable[[Any], contextlib.AbstractContextManager[Any]],
) -> None:
    """Restore ``batches`` with one spawned worker per entry of ``setups`` (its ``threads``,
    ``gpu`` and ``rank``), each taking the next batch when idle; ``report`` gets each input's
    :class:`Outcome` as it comes, ``status`` a one-line summary of what each worker is on;
    ``restore_jobs`` and ``output_context`` are what each worker runs (see :func:`worker_main`). A
    worker that dies is replaced and the inputs it was on are reported failed. Ctrl-C or
    SIGTERM stops the workers (each writes the best image so far of its fit) and is raised."""
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    pending = list(reversed(batches))
    workers: dict[int, _Worker] = {}

    def start(index: int) -> None:
        parent, child = context.Pipe()
        shared = None
        if setups[index].get("share_threads"):
            shared = context.RawValue("i", int(setups[index]["threads"]))
        process = context.Process(
            target=worker_main,
            args=(
                index,
                _worker_cfg(cfg, setups[index]),
                inputs,
                folder,
                setups[index],
                child,
                restore_jobs,
                output_context,
                shared,
            ),
            name=f"dip-restore-worker-{index}",
        )
        process.start()
        child.close()
        workers[index] = _Worker(index, process, parent, threads=shared)

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminated)
    restarts = 0
    try:
        for index in range(min(len(setups), len(batches))):
            start(index)
        while workers:
            for worker in workers.values():
                if worker.busy or worker.stopping or not worker.process.is_alive():
                    continue
                with contextlib.suppress(OSError):  # a dead worker is seen below
                    if pending:
                        worker.busy = pending.pop()
                        worker.since = time.monotonic()
                        worker.conn.send(worker.busy)
                    else:
                        worker.stopping = True
                        worker.conn.send(None)
            share_idle_cores(workers.values(), setups, bool(pending))
            if status is not None:
                status(_describe(workers.values()))
            sources = [w.conn for w in workers.values()] + [
                w.process.sentinel for w in workers.values()
            ]
            wait(sources, timeout=1.0)
            for worker in list(workers.values()):
                ended = False
                while not ended and worker.conn.poll():
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        ended = True  # the worker exited (its end of the pipe closed)
                        break
                    if isinstance(message, Outcome):
                        worker.busy = [
                            job for job in worker.busy if str(job.output) != message.output
                        ]
                        report(message)
                if ended:
                    worker.process.join()
                    code = worker.process.exitcode
                    del workers[worker.index]
                    for job in worker.busy:
                        report(_failed(job, _death(code)))
                    if pending and restarts < 2 * len(setups):
                        restarts += 1
                        start(worker.index)  # replace it and go on
            if not workers:
                for batch in pending:  # every worker died: the rest cannot be restored
                    for job in batch:
                        report(_failed(job, "no worker was left to restore it"))
    except KeyboardInterrupt:
        _stop(workers.values())
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for worker in workers.values():
            with contextlib.suppress(OSError):
                worker.conn.close()


def share_idle_cores(workers: Any, setups: list[dict[str, Any]], pending: bool) -> None:
    """Once no input is left to hand out (``pending`` false), the threads of the whole pool
    (every entry of ``setups``, including the workers that have exited) go to the workers still
    fitting, split evenly; until then each worker keeps its own count. Only workers that share
    their count (``threads`` set) take part."""
    sharing = [w for w in workers if w.threads is not None]
    if not sharing:
        return
    busy = [w for w in sharing if w.busy and not w.stopping and w.process.is_alive()]
    total = sum(int(setup["threads"]) for setup in setups)
    for worker in sharing:
        wanted = int(setups[worker.index]["threads"])
        if not pending and worker in busy:
            rank = busy.index(worker)
            wanted = total // len(busy) + (1 if rank < total % len(busy) else 0)
        if worker.threads.value != wanted:
            worker.threads.value = wanted


def _worker_cfg(cfg: Any, setup: dict[str, Any]) -> Any:
    """``cfg`` for a worker: its GPU, and no fit bar (the parent shows the progress)."""
    copy = cfg.clone()
    copy.fit_bar = False
    copy.gpu = setup.get("gpu")
    copy.thread_share = bool(setup.get("share_threads"))
    return copy


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"the worker restoring it died ({name})"
    return f"the worker restoring it exited with status {code}"


def _stop(workers: Any) -> None:
    """Let each worker write the best image of its fit and end: a Ctrl-C in a terminal
    reached them already; those still running after a moment get SIGTERM (which a fit
    handles as Ctrl-C), and those still running after a minute are killed."""
    workers = list(workers)
    deadline = time.monotonic() + 2
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
    for worker in workers:
        if worker.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                worker.process.terminate()
    deadline = time.monotonic() + 60
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(10)


def _describe(workers: Any) -> str:
    """``w0 a.png 0:35, w1 b.png 0:12``: what each worker is on and for how long."""
    parts = []
    now = time.monotonic()
    for worker in sorted(workers, key=lambda w: w.index):
        if worker.busy:
            seconds = int(now - worker.since)
            name = Path(str(worker.busy[0].input)).name
            more = f"+{len(worker.busy) - 1}" if len(worker.busy) > 1 else ""
            parts.append(f"w{worker.index} {name}{more} {seconds // 60}:{seconds % 60:02d}")
        else:
            parts.append(f"w{worker.index} idle")
    return ", ".join(parts)


def _library_warnings_off() -> None:
    """The warnings ``dip`` hides in every process (see :func:`dip_lightning.cli.main`)."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller")
