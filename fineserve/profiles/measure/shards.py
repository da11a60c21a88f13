"""One profiling run over several GPUs of a host: which GPU measures what, and the merge.

The device is billed by the wall time a machine is held, whatever its GPU count, so a
profile call uses every GPU: one process per GPU (``CUDA_VISIBLE_DEVICES``, its own MPS
daemon and compile caches), each measuring its share of the jobs into a folder of its own,
merged into the shared output at the end.

- **Split** (``split_jobs``): jobs are (model, precision) pairs, so that a precision's SM
  shares start in one wave and compile once; a pair estimated longer than a GPU's fair share
  (total / N) is split into one job per SM share (each then compiles on its own GPU: the
  estimate of each piece includes that). Longest first onto the least loaded GPU
  (``session.shard``), except that a job stays on the GPU whose compile caches hold its model
  from an earlier call where that costs the balance at most its start time (``sticky``).
  The pieces of a split pair go first on their GPUs, one piece a GPU (``pieces_first``).
- **Shard folders** (``{out}.shards/{k}``): a shard copies the result files of its own
  entries from the shared output and records their sizes (``MANIFEST``); it appends only.
  Two shards may hold the same precision (a split pair) but never write one file.
- **Merge** (``merge_shard``): what each shard appended past the recorded size is appended to
  the shared file (JSONL records and logs); CSV and metadata are exported again from the
  merged JSONL by the caller. Each file merged is recorded in the manifest at once, and a
  merged shard folder is removed, so merging twice (the parent at the end, ``--merge-shards``
  after a killed call, even one killed mid-merge) adds nothing twice.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fineserve.profiles.measure.session import shard

MANIFEST = ".resumed.json"  # {relative path: size when copied} in a shard folder
APPENDED = (".jsonl", ".log")  # what a run appends to; .csv / .meta.json are re-exported


@dataclass(frozen=True, slots=True)
class Job:
    """What one GPU measures of one model: precisions and SM shares (None: the grid's)."""

    model: str
    precisions: tuple[str, ...]
    sm: tuple[float, ...] | None

    @property
    def name(self) -> str:
        sm = "" if self.sm is None else "@" + ",".join(f"{s:g}" for s in self.sm)
        return f"{self.model}|{','.join(self.precisions)}{sm}"


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """Jobs per GPU, in measuring order, and their estimated seconds."""

    jobs: tuple[tuple[Job, ...], ...]
    seconds: tuple[float, ...]

    @property
    def wall_s(self) -> float:
        return max(self.seconds, default=0.0)


def split_jobs(
    pairs: Sequence[Job], n: int, estimate: Callable[[Job], float],
    sm_shares: Callable[[Job], tuple[float, ...]],
    home: Callable[[Job], int | None] = lambda _: None,
    start_s: Callable[[Job], float] = lambda _: 0.0,
) -> ShardPlan:  # fmt: skip
    """Spread ``pairs`` (one precision each, in measuring order) over ``n`` GPUs.

    ``estimate`` gives a job's seconds alone on a GPU (cold compile included, nothing left:
    0); ``sm_shares`` the SM shares a pair would measure. Jobs with nothing left are dropped.
    ``home``: the GPU whose compile caches already hold a job's model (``sticky``), and
    ``start_s`` what starting it there saves at most.

    Raises:
        ValueError: ``n`` < 1, or a pair with several precisions.
    """
    if any(len(p.precisions) != 1 for p in pairs):
        raise ValueError("split_jobs: give one precision per pair")
    costs = [(p, estimate(p)) for p in pairs]
    costs = [(p, s) for p, s in costs if s > 0]
    fair = sum(s for _, s in costs) / max(1, n)
    jobs: list[tuple[Job, float]] = []
    pieces: dict[str, str] = {}  # a split pair's piece -> the pair
    for pair, seconds in costs:
        shares = sm_shares(pair)
        if n > 1 and seconds > fair and len(shares) > 1:
            split = [Job(pair.model, pair.precisions, (sm,)) for sm in shares]
            split = [(j, s) for j in split if (s := estimate(j)) > 0]
            jobs += split
            pieces |= {j.name: pair.name for j, _ in split}
        else:
            jobs.append((pair, seconds))
    names = [(j.name, s) for j, s in jobs]
    if len(set(n for n, _ in names)) != len(names):
        raise ValueError("split_jobs: the same job twice")
    by_name = {j.name: (j, s) for j, s in jobs}
    homes = {j.name: k for j, _ in jobs if (k := home(j)) is not None and 0 <= k < n}
    per_gpu = sticky(names, n, homes, {j.name: start_s(j) for j, _ in jobs if j.name in homes})
    per_gpu = pieces_first(per_gpu, pieces, dict(names))
    return ShardPlan(
        tuple(tuple(by_name[x][0] for x in gpu) for gpu in per_gpu),
        tuple(sum(by_name[x][1] for x in gpu) for gpu in per_gpu),
    )  # fmt: skip


def sticky(items: Sequence[tuple[str, float]], n: int, home: Mapping[str, int],
           slack: Mapping[str, float]) -> tuple[tuple[str, ...], ...]:  # fmt: skip
    """``session.shard`` (longest first onto the least loaded), except that a job goes to
    its ``home`` GPU (compile caches warm there: a job moved to another GPU compiles cold,
    45-150 s) where that GPU's load stays within the longest-first wall plus the job's
    ``slack`` (its start time); if the result's wall is longer than the longest-first one by
    more than the largest slack, the longest-first split. Each GPU keeps the input order.
    """
    base = shard(items, n)
    if not home:
        return base
    seconds = dict(items)
    wall = max(sum(seconds[x] for x in gpu) for gpu in base)
    loads, owner = [0.0] * n, {}
    for name, cost in sorted(items, key=lambda kv: -kv[1]):
        k = home.get(name)
        if k is None or loads[k] + cost > wall + slack.get(name, 0.0):
            k = min(range(n), key=lambda i: (loads[i], i))
        owner[name] = k
        loads[k] += cost
    if max(loads) > wall + max(slack.values(), default=0.0):
        return base
    return tuple(tuple(name for name, _ in items if owner[name] == k) for k in range(n))


def pieces_first(per_gpu: Sequence[Sequence[str]], pieces: Mapping[str, str],
                 seconds: Mapping[str, float]) -> tuple[tuple[str, ...], ...]:
    """Each GPU measures the pieces of split pairs (``pieces``: piece -> pair) first,
    longest first, and two pieces of one pair on one GPU are parted where a GPU without
    one is less loaded (the smaller moves there, where the two GPUs' longer load drops).
    Why: a split pair is longer than
    a GPU's share (the 70B int4, ~90 s to start and ~300 s to measure an SM share); behind
    other jobs it was left to start late in a call and measured 1-2 points (session 6)."""
    gpus = [list(g) for g in per_gpu]

    def load(k: int) -> float:
        return sum(seconds[x] for x in gpus[k])

    for k in range(len(gpus)):
        mine = sorted((x for x in gpus[k] if x in pieces), key=lambda x: -seconds[x])
        for extra in mine[1:][::-1]:  # keep the longest piece of each pair here
            siblings = [x for x in gpus[k] if x in pieces and pieces[x] == pieces[extra]]
            if len(siblings) < 2:
                continue
            free = [i for i in range(len(gpus)) if i != k and not any(
                pieces.get(x) == pieces[extra] for x in gpus[i])]
            to = min(free, key=lambda i: (load(i), i)) if free else None
            if to is not None and load(to) + seconds[extra] < load(k):  # the wall never grows
                gpus[k].remove(extra)
                gpus[to].append(extra)
    return tuple(tuple(sorted((x for x in g if x in pieces), key=lambda x: -seconds[x])
                       + [x for x in g if x not in pieces]) for g in gpus)


def grouped(jobs: Sequence[Job]) -> tuple[Job, ...]:
    """Consecutive jobs of one model and SM shares as one (their engines share waves)."""
    out: list[Job] = []
    for job in jobs:
        if out and out[-1].model == job.model and out[-1].sm == job.sm:
            out[-1] = Job(job.model, out[-1].precisions + job.precisions, job.sm)
        else:
            out.append(job)
    return tuple(out)


def jobs_to_json(jobs: Sequence[Job]) -> str:
    return json.dumps([[j.model, list(j.precisions), None if j.sm is None else list(j.sm)]
                       for j in jobs])


def jobs_from_json(text: str) -> tuple[Job, ...]:
    """The inverse of ``jobs_to_json``.

    Raises:
        ValueError: not a list of [model, [precision, ...], [sm, ...] or null].
    """
    try:
        return tuple(Job(str(m), tuple(str(p) for p in ps),
                         None if sm is None else tuple(float(x) for x in sm))
                     for m, ps, sm in json.loads(text))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"jobs: {text[:80]!r} is not a job list ({exc})") from None


def shard_folder(out: Path, k: int) -> Path:
    """Where shard ``k`` of a run writing to ``out`` keeps its files."""
    return out.parent / f"{out.name}.shards" / str(k)


def shard_folders(out: Path) -> list[Path]:
    root = out.parent / f"{out.name}.shards"
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name) \
        if root.is_dir() else []


def write_manifest(folder: Path, sizes: dict[str, int]) -> None:
    """Record the sizes of the files copied into a shard folder (before they are copied,
    so a kill mid-copy never leaves a copy the merge would take for new records), and after
    each file a merge appended (a merge cut short resumes, not repeats). Atomic: a temp file
    renamed over the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"{MANIFEST}.part"
    part.write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
    os.replace(part, folder / MANIFEST)


def copy_results(source: Path, out: Path,
                 mine: set[tuple[str, str]] | None = None) -> dict[str, int]:  # fmt: skip
    """Copy result files (JSONL, CSV, metadata; read-only in a checkout) from ``source`` into
    ``out`` where ``out`` lacks them; returns {relative path: bytes} copied. With ``mine``
    ((model folder, precision) pairs) only theirs, into a shard folder: its manifest is
    written before anything is copied and each copy is renamed into place, so a kill
    mid-copy leaves nothing the merge would take for new records."""
    todo = {}
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        stem = path.name.split(".jsonl")[0].split(".csv")[0].split(".meta.json")[0]
        if mine is not None and (path.parent.name, stem) not in mine:
            continue
        if path.is_file() and path.suffix in (".jsonl", ".csv", ".json") \
                and not (out / rel).exists() and not any(p.startswith(".") for p in rel.parts):
            todo[str(rel)] = path
    copied = {rel: path.stat().st_size for rel, path in todo.items()}
    if mine is not None:
        write_manifest(out, copied)
    for rel, path in todo.items():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.part")
        shutil.copyfile(path, part)  # contents only: the copy is writable
        os.replace(part, target)
    return copied


def folder_home(cache: Path, model_folder: str, n: int) -> int | None:
    """The one GPU k < ``n`` whose cache folder (``{cache}-gpuK``) holds ``model_folder``
    (``modeldir.write_model_dir``'s name) from an earlier call, so its compile caches are
    there (``sticky``); None where no GPU or several do."""
    homes = [k for k in range(n) if (Path(f"{cache}-gpu{k}") / "models" / model_folder).is_dir()]
    return homes[0] if len(homes) == 1 else None


def merge_shard(folder: Path, out: Path) -> tuple[Path, ...]:
    """Append what shard ``folder`` added to its JSONL and log files onto ``out``'s, then
    remove the folder. Returns the JSONL files of ``out`` that grew (to export again).

    Raises:
        ValueError: a shard file shorter than when it was copied (not append-only).
    """
    manifest = folder / MANIFEST
    sizes: dict[str, int] = json.loads(manifest.read_text()) if manifest.exists() else {}
    grown = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or path.suffix not in APPENDED \
                or any(part.startswith(".") for part in rel.parts):
            continue
        data = path.read_bytes()
        start = sizes.get(str(rel), 0)
        if len(data) < start:
            raise ValueError(f"merge: {path} shrank from {start} to {len(data)} bytes")
        if len(data) == start:
            continue
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "ab") as sink:
            if target.suffix == ".jsonl" and sink.tell() and not _ends_with_newline(target):
                sink.write(b"\n")  # a record cut short by a kill stays a line of its own
            sink.write(data[start:])
        sizes[str(rel)] = len(data)
        write_manifest(folder, sizes)  # merged: a merge cut short here does not repeat it
        if target.suffix == ".jsonl":
            grown.append(target)
    shutil.rmtree(folder)
    return tuple(grown)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"
