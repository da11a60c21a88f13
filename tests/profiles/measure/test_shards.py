"""Multi-GPU profiling: the split of jobs over GPUs and the merge of shard folders."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.profiles.measure.session import shard
from fineserve.profiles.measure.shards import (
    MANIFEST,
    Job,
    grouped,
    jobs_from_json,
    jobs_to_json,
    merge_shard,
    shard_folder,
    shard_folders,
    split_jobs,
    sticky,
    write_manifest,
)

SM = (100.0, 50.0, 30.0)


def costs(table: dict[str, float]):
    """estimate(job): the pair's seconds, a third of it per SM share plus a 60 s compile."""
    def estimate(job: Job) -> float:
        whole = table[f"{job.model}|{job.precisions[0]}"]
        return whole if job.sm is None else whole / len(SM) * len(job.sm) + 60
    return estimate


def pairs(table: dict[str, float]) -> list[Job]:
    return [Job(k.split("|")[0], (k.split("|")[1],), None) for k in table]


def test_two_gpus_balance_pairs_and_keep_the_measuring_order():
    table = {"8b|bf16": 400, "8b|fp8": 300, "3b|bf16": 350, "70b|int4": 700}
    plan = split_jobs(pairs(table), 2, costs(table), lambda j: SM)
    assert plan.seconds == (1000, 750)  # longest first onto the least loaded
    assert [j.name for j in plan.jobs[0]] == ["8b|fp8", "70b|int4"]  # in the input order
    assert [j.name for j in plan.jobs[1]] == ["8b|bf16", "3b|bf16"]
    assert plan.wall_s == 1000


def test_a_pair_longer_than_a_gpus_share_is_split_by_sm_share():
    table = {"8b|bf16": 300, "70b|int4": 1500}
    plan = split_jobs(pairs(table), 3, costs(table), lambda j: SM)
    names = sorted(j.name for gpu in plan.jobs for j in gpu)
    assert names == ["70b|int4@100", "70b|int4@30", "70b|int4@50", "8b|bf16"]
    assert plan.wall_s == pytest.approx(860)  # 500 + 60 compile, plus the 8B on one GPU


def test_one_gpu_never_splits_and_finished_jobs_are_dropped():
    table = {"8b|bf16": 0, "70b|int4": 1500}
    plan = split_jobs(pairs(table), 1, costs(table), lambda j: SM)
    assert [[j.name for j in gpu] for gpu in plan.jobs] == [["70b|int4"]]
    with pytest.raises(ValueError, match="one precision"):
        split_jobs([Job("8b", ("bf16", "fp8"), None)], 2, lambda j: 1.0, lambda j: SM)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2000), min_size=1, max_size=9), st.integers(1, 5))
def test_every_sm_share_of_every_pair_is_measured_by_exactly_one_gpu(seconds, n):
    table = {f"m{i}|p": float(s) for i, s in enumerate(seconds)}
    plan = split_jobs(pairs(table), n, costs(table), lambda j: SM)
    covered: dict[str, list[float]] = {}
    for gpu in plan.jobs:
        for job in gpu:
            covered.setdefault(job.model, []).extend(job.sm or SM)
    assert {m: sorted(v) for m, v in covered.items()} == \
        {f"m{i}": sorted(SM) for i, s in enumerate(seconds) if s > 0}
    assert len(plan.jobs) == n
    longest = max((costs(table)(j) for gpu in plan.jobs for j in gpu), default=0.0)
    assert plan.wall_s <= sum(plan.seconds) / n + longest + 1e-6  # the greedy bound


def test_a_job_stays_on_the_gpu_whose_caches_hold_its_model():
    table = {"8b|bf16": 400, "8b|fp8": 300, "3b|bf16": 350, "70b|int4": 700}
    cold = split_jobs(pairs(table), 2, costs(table), lambda j: SM)
    assert "8b|fp8" in [j.name for j in cold.jobs[0]]  # longest first puts it on GPU 0
    home = {"8b|fp8": 1}
    plan = split_jobs(pairs(table), 2, costs(table), lambda j: SM,
                      lambda j: home.get(j.name), lambda j: 90.0)
    assert "8b|fp8" in [j.name for j in plan.jobs[1]]  # its caches are on GPU 1
    assert plan.wall_s <= cold.wall_s + 90.0


def test_a_home_that_unbalances_the_split_by_more_than_a_start_is_ignored():
    table = {"a|p": 500, "b|p": 500, "c|p": 500, "d|p": 500}
    every = dict.fromkeys(table, 0)  # all cached on GPU 0: as many stay as fit the balance
    assert sticky(list(table.items()), 2, every, dict.fromkeys(table, 90.0)) == \
        (("a|p", "b|p"), ("c|p", "d|p"))
    one = sticky(list(table.items()), 2, {"d|p": 1}, {"d|p": 90.0})
    assert "d|p" in one[1] and sorted(map(len, one)) == [2, 2]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2000), st.integers(-1, 3)), min_size=1, max_size=9),
       st.integers(1, 4), st.integers(0, 300))
def test_sticky_costs_the_wall_at_most_one_start(jobs, n, slack):
    items = [(f"j{i}", float(s)) for i, (s, _) in enumerate(jobs)]
    home = {f"j{i}": k for i, (_, k) in enumerate(jobs) if 0 <= k < n}
    out = sticky(items, n, home, dict.fromkeys(home, float(slack)))
    assert sorted(x for gpu in out for x in gpu) == sorted(name for name, _ in items)
    seconds = dict(items)

    def wall(split):
        return max(sum(seconds[x] for x in gpu) for gpu in split)

    assert wall(out) <= wall(shard(items, n)) + slack + 1e-6


def test_consecutive_jobs_of_one_model_and_sm_shares_group_into_one():
    jobs = [Job("8b", ("bf16",), None), Job("8b", ("fp8",), None), Job("70b", ("int4",), (50.0,)),
            Job("70b", ("int4-awq",), (100.0,))]
    assert [j.name for j in grouped(jobs)] == ["8b|bf16,fp8", "70b|int4@50", "70b|int4-awq@100"]
    assert jobs_from_json(jobs_to_json(jobs)) == tuple(jobs)
    with pytest.raises(ValueError, match="not a job list"):
        jobs_from_json('{"model": 1}')


def _shard(tmp_path, k: int, files: dict[str, bytes], appended: dict[str, bytes]):
    """A shard folder holding copies of ``files`` (recorded) plus what it ``appended``."""
    folder = shard_folder(tmp_path / "out", k)
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    write_manifest(folder, {rel: len(data) for rel, data in files.items()})
    for rel, data in appended.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(folder / rel, "ab") as f:
            f.write(data)
    return folder


def test_merge_appends_only_what_each_shard_added(tmp_path):
    out = tmp_path / "out"
    base = {"H100/8b/bf16.jsonl": b'{"a": 1}\n', "H100/8b/bf16.csv": b"old csv\n"}
    for rel, data in base.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    _shard(tmp_path, 0, base, {"H100/8b/bf16.jsonl": b'{"b": 2}\n',
                               "H100/8b/bf16.csv": b"shard csv\n",
                               "H100/8b/bf16.log": b"log 0\n"})
    _shard(tmp_path, 1, base, {"H100/8b/bf16.jsonl": b'{"c": 3}\n',
                               "H100/70b/int4.jsonl": b'{"d": 4}\n'})
    (shard_folder(out, 1) / "H100/8b/.wave-1-0").mkdir()  # control folders are not merged
    grown = [p for f in shard_folders(out) for p in merge_shard(f, out)]
    assert sorted(p.relative_to(out).as_posix() for p in grown) == \
        ["H100/70b/int4.jsonl", "H100/8b/bf16.jsonl", "H100/8b/bf16.jsonl"]
    assert (out / "H100/8b/bf16.jsonl").read_bytes() == b'{"a": 1}\n{"b": 2}\n{"c": 3}\n'
    assert (out / "H100/8b/bf16.csv").read_bytes() == b"old csv\n"  # exported again by the caller
    assert (out / "H100/8b/bf16.log").read_bytes() == b"log 0\n"
    assert shard_folders(out) == []  # merged folders are gone: merging again adds nothing


def test_merge_keeps_a_torn_record_on_a_line_of_its_own(tmp_path):
    out = tmp_path / "out"
    (out / "g/m").mkdir(parents=True)
    (out / "g/m/p.jsonl").write_bytes(b'{"a": 1}\n{"torn"')
    folder = _shard(tmp_path, 0, {}, {"g/m/p.jsonl": b'{"b": 2}\n'})
    merge_shard(folder, out)
    assert (out / "g/m/p.jsonl").read_bytes().splitlines()[-1] == b'{"b": 2}'


def test_merge_refuses_a_shard_file_that_shrank(tmp_path):
    folder = _shard(tmp_path, 0, {"g/m/p.jsonl": b"0123456789\n"}, {})
    (folder / "g/m/p.jsonl").write_bytes(b"01\n")
    with pytest.raises(ValueError, match="shrank"):
        merge_shard(folder, tmp_path / "out")
    assert json.loads((folder / MANIFEST).read_text()) == {"g/m/p.jsonl": 11}


def test_a_merge_cut_short_and_merged_again_adds_nothing_twice(tmp_path, monkeypatch):
    import fineserve.profiles.measure.shards as shards

    out = tmp_path / "out"
    base = {"H100/8b/bf16.jsonl": b'{"a": 1}\n'}
    (out / "H100/8b").mkdir(parents=True)
    (out / "H100/8b/bf16.jsonl").write_bytes(base["H100/8b/bf16.jsonl"])
    folder = _shard(tmp_path, 0, base, {"H100/8b/bf16.jsonl": b'{"b": 2}\n',
                                        "H100/70b/int4.jsonl": b'{"d": 4}\n'})

    def killed(path):  # the kill lands after the appends, before the folder is gone
        raise KeyboardInterrupt

    monkeypatch.setattr(shards.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        merge_shard(folder, out)
    monkeypatch.undo()
    assert merge_shard(folder, out) == ()  # --merge-shards after the kill
    assert (out / "H100/8b/bf16.jsonl").read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert (out / "H100/70b/int4.jsonl").read_bytes() == b'{"d": 4}\n'
    assert shard_folders(out) == []


def test_the_pieces_of_a_split_pair_go_first_each_on_a_gpu_of_its_own():
    """Session 6's third call: the 70B's SM 100 behind the 14B on one GPU, started late."""
    table = {"8b|bf16": 120, "14b|fp8": 160, "70b|int4": 700}
    two = {"70b|int4@100": 250, "70b|int4@50": 390}

    def cost(job):
        return two.get(job.name, table.get(job.name, 0.0))

    home = {"70b|int4@100": 0, "70b|int4@50": 0}  # both cached on GPU 0 by an earlier call
    plan = split_jobs(pairs(table), 4, cost, lambda j: (100.0, 50.0),
                      lambda j: home.get(j.name), lambda j: 90.0)
    firsts = {gpu[0].name for gpu in plan.jobs if gpu}
    assert {"70b|int4@100", "70b|int4@50"} <= firsts
    holders = [k for k, gpu in enumerate(plan.jobs) if any(j.model == "70b" for j in gpu)]
    assert len(holders) == 2


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 600), min_size=1, max_size=6), st.integers(3700, 6000),
       st.integers(2, 5), st.integers(-1, 4))
def test_split_pieces_lead_their_gpus_and_never_share_one(small, big, n, home_gpu):
    table = {f"m{i}|p": float(s) for i, s in enumerate(small)} | {"big|p": float(big)}
    plan = split_jobs(pairs(table), n, costs(table), lambda j: SM,
                      lambda j: home_gpu if j.model == "big" and 0 <= home_gpu < n else None,
                      lambda j: 90.0)
    pieces = [j for gpu in plan.jobs for j in gpu if j.sm is not None]
    assert len(pieces) == len(SM)  # longer than a GPU's share: split
    for gpu in plan.jobs:
        mine = [j for j in gpu if j.sm is not None]
        assert len(mine) <= 1 or n < len(SM)
        assert [j for j in gpu[:len(mine)]] == mine  # the pieces first
