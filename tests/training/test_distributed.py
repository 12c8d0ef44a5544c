"""Tests of carbongeo.training.distributed in one process: context, no-op collectives, samplers."""

from __future__ import annotations

import pytest
import torch

from carbongeo.training.distributed import (
    DistContext,
    EpochSampler,
    ShardSampler,
    all_reduce,
    barrier,
    init_distributed,
    process_device,
    shutdown,
)


def test_without_torchrun_the_run_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(torch.device("cpu"))
    assert ctx == DistContext()
    assert ctx.is_main and not ctx.distributed and not ctx.owns_group
    assert process_device(torch.device("cpu"), ctx) == torch.device("cpu")
    shutdown(ctx)  # nothing to destroy


def test_collectives_leave_a_single_process_unchanged() -> None:
    ctx = DistContext()
    values = torch.tensor([1.0, 5.0])
    assert all_reduce(values, ctx) is values and values.tolist() == [1.0, 5.0]
    assert all_reduce(values, ctx, "max").tolist() == [1.0, 5.0]
    barrier(ctx)


def test_epoch_sampler_order_is_a_function_of_the_epoch() -> None:
    data = list(range(10))
    sampler = EpochSampler.shuffled(data, DistContext(), seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert sorted(i for i, _ in first) == data and {e for _, e in first} == {1}
    sampler.set_epoch(2)
    second = [i for i, _ in sampler]
    assert second != [i for i, _ in first]
    again = EpochSampler.shuffled(data, DistContext(), seed=3)
    again.set_epoch(1)
    assert list(again) == first
    assert sampler.epoch_length == 10 and len(sampler) == 10


def test_epoch_sampler_resumes_part_way_through_an_epoch() -> None:
    sampler = EpochSampler.shuffled(list(range(10)), DistContext(), seed=0)
    sampler.set_epoch(4)
    whole = list(sampler)
    sampler.set_epoch(4, start=6)
    assert list(sampler) == whole[6:] and len(sampler) == 4
    sampler.set_epoch(4, start=12)
    assert list(sampler) == [] and len(sampler) == 0


def test_samplers_partition_the_data_over_processes() -> None:
    world = 3
    shards = [list(ShardSampler(10, rank, world)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))  # nothing repeated
    assert [len(s) for s in shards] == [4, 3, 3]
    train = []
    for rank in range(world):
        sampler = EpochSampler.shuffled(list(range(12)), DistContext(rank, world), seed=0)
        sampler.set_epoch(1)
        train.append([i for i, _ in sampler])
    assert sorted(i for shard in train for i in shard) == list(range(12))
