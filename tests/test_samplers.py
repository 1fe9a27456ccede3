"""The sampler family: class mix, determinism, sharding, progressive and class-aware."""

import pytest
import torch

from longtail.config import parse_sampler_spec
from longtail.data.samplers import ClassAwareSampler, build_sampler, class_probabilities

COUNTS = [500, 200, 80, 30, 10, 4]
LABELS = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))
# Shuffle the dataset order so that indices do not reveal the class.
LABELS = LABELS[torch.randperm(len(LABELS), generator=torch.Generator().manual_seed(0))]


def empirical_mix(sampler, epochs=range(40)):
    hist = torch.zeros(len(COUNTS), dtype=torch.float64)
    for e in epochs:
        sampler.set_epoch(e)
        hist += torch.bincount(LABELS[sampler.indices()], minlength=len(COUNTS))
    return hist / hist.sum()


def total_variation(p, q):
    return 0.5 * (p - q).abs().sum().item()


@pytest.mark.parametrize("spec,q", [("instance", 1.0), ("class", 0.0), ("sqrt", 0.5),
                                    (0.25, 0.25), (0.8, 0.8)])
def test_class_mix_matches_n_to_the_q(spec, q):
    sampler = build_sampler(spec, LABELS, seed=1)
    mix = empirical_mix(sampler)
    assert total_variation(mix, class_probabilities(COUNTS, q)) < 0.01
    # ... and is clearly wrong for q off by 0.1, so the bound can fail.
    for off in (q - 0.1, q + 0.1):
        if 0 <= off <= 1:
            assert total_variation(mix, class_probabilities(COUNTS, off)) > 0.02


def test_instance_sampler_is_a_permutation():
    sampler = build_sampler("instance", LABELS, seed=0)
    assert sorted(sampler.indices().tolist()) == list(range(len(LABELS)))


def test_every_sampler_yields_an_epoch_of_the_training_set_size():
    for spec in ("instance", "class", "sqrt", "progressive", "class_aware", 0.3):
        sampler = build_sampler(spec, LABELS, total_epochs=5)
        assert len(sampler) == len(LABELS) == len(list(sampler))
    assert len(build_sampler("class", LABELS, num_samples=100).indices()) == 100


def test_same_seed_and_epoch_same_stream_other_epoch_other_stream():
    for spec in ("instance", "class", "progressive", "class_aware"):
        a = build_sampler(spec, LABELS, seed=7, total_epochs=4)
        b = build_sampler(spec, LABELS, seed=7, total_epochs=4)
        a.set_epoch(2)
        b.set_epoch(2)
        assert torch.equal(a.indices(), b.indices())
        b.set_epoch(3)
        assert not torch.equal(a.indices(), b.indices())
        c = build_sampler(spec, LABELS, seed=8, total_epochs=4)
        c.set_epoch(2)
        assert not torch.equal(a.indices(), c.indices())


def test_samplers_leave_global_rngs_alone():
    import random

    import numpy as np

    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    expected = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    for spec in ("instance", "class", "progressive", "class_aware"):
        list(build_sampler(spec, LABELS, total_epochs=3))
    assert (torch.rand(1), random.random(), np.random.rand()) == expected


def test_progressive_goes_from_instance_to_class_balanced():
    total = 20
    sampler = build_sampler("progressive", LABELS, seed=0, total_epochs=total)
    first = torch.zeros(len(COUNTS), dtype=torch.float64)
    last = torch.zeros(len(COUNTS), dtype=torch.float64)
    for _ in range(30):  # many draws at a fixed epoch: vary the seed
        sampler.seed += 1
        sampler.set_epoch(0)
        first += torch.bincount(LABELS[sampler.indices()], minlength=len(COUNTS))
        sampler.set_epoch(total - 1)
        last += torch.bincount(LABELS[sampler.indices()], minlength=len(COUNTS))
    assert total_variation(first / first.sum(), class_probabilities(COUNTS, 1.0)) < 0.01
    # the last epoch (t = T-1) draws every class equally often
    assert total_variation(last / last.sum(), class_probabilities(COUNTS, 0.0)) < 0.01
    sampler.set_epoch(total // 2)  # half-way: s = 10/19
    s = (total // 2) / (total - 1)
    expected = (1 - s) * class_probabilities(COUNTS, 1.0) + s * class_probabilities(COUNTS, 0.0)
    assert torch.allclose(sampler.class_probabilities(), expected)


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("spec", ["instance", "class", "sqrt", "class_aware"])
def test_shards_are_disjoint_equal_and_keep_the_class_mix(replicas, spec):
    single = build_sampler(spec, LABELS, seed=5, num_replicas=1, rank=0)
    shards = []
    for rank in range(replicas):
        s = build_sampler(spec, LABELS, seed=5, num_replicas=replicas, rank=rank)
        s.set_epoch(1)
        shards.append(s.indices())
    single.set_epoch(1)
    assert len({len(s) for s in shards}) == 1
    assert len(shards[0]) * replicas >= len(LABELS)
    # Disjoint positions of one global stream: interleaving the shards gives it back.
    stream = torch.stack(shards, dim=1).flatten()
    expected = build_sampler(spec, LABELS, seed=5, num_samples=len(stream), num_replicas=1,
                             rank=0)
    expected.set_epoch(1)
    assert torch.equal(stream, expected.indices())
    if spec == "instance":  # no replacement: the shards share no image (beyond padding)
        assert len(set(stream.tolist())) == len(LABELS)
    union_mix = torch.bincount(LABELS[stream], minlength=len(COUNTS)).double() / len(stream)
    single_mix = torch.bincount(LABELS[single.indices()], minlength=len(COUNTS)).double()
    assert total_variation(union_mix, single_mix / single_mix.sum()) < 0.03


def test_class_aware_yields_runs_of_k_equal_labels_over_cycled_classes():
    k = 4
    sampler = ClassAwareSampler(LABELS, samples_per_class=k, seed=3)
    runs = LABELS[sampler.indices()][: (len(LABELS) // k) * k].view(-1, k)
    assert (runs == runs[:, :1]).all()
    picks = runs[:, 0]
    # The class list is cycled: every block of C picks holds each class once.
    C = len(COUNTS)
    for block in picks[: (len(picks) // C) * C].view(-1, C):
        assert sorted(block.tolist()) == list(range(C))
    # Within a class, images are not repeated before the class list is used up.
    members = sampler.indices()[LABELS[sampler.indices()] == 5].tolist()
    n5 = COUNTS[5]
    for start in range(0, len(members) - n5 + 1, n5):
        assert len(set(members[start : start + n5])) == n5


def test_parse_sampler_spec():
    assert parse_sampler_spec("sqrt") == "sqrt"
    assert parse_sampler_spec(0.3) == 0.3
    assert parse_sampler_spec("0.3") == 0.3
    for bad in ("balanced", 1.5, -0.1, True):
        with pytest.raises(ValueError):
            parse_sampler_spec(bad)


def test_sampler_reads_rank_from_arguments_and_checks_them():
    with pytest.raises(ValueError, match="rank"):
        build_sampler("class", LABELS, num_replicas=2, rank=2)


def test_bad_labels_and_sizes_are_named():
    for labels, kwargs, message in (
            ([0.5, 1.2], {}, r"^labels: expected integer labels, found 0.5 in row 0$"),
            ([-1, 0], {}, r"^labels: expected labels >= 0, found -1$"),
            ([], {}, r"^labels: expected at least one label, found none$"),
            ([[0, 1]], {}, r"^labels: expected a 1-d array of labels, found shape \(1, 2\)$"),
            ([0, 1], {"num_samples": 0}, r"^num_samples: expected an int >= 1 or None")):
        with pytest.raises(ValueError, match=message):
            build_sampler("class", labels, num_replicas=1, rank=0, **kwargs)
    # integer-valued floats are the classes they name
    assert sorted(build_sampler("instance", [0.0, 1.0, 1.0], num_replicas=1, rank=0)) == [0, 1, 2]


def test_class_aware_runs_longer_than_an_epoch_allows_are_refused(tmp_path, capsys):
    """samples_per_class so long that an epoch visits under half the classes (one, at 2^20):
    a run trained on one class an epoch and ended at chance, without a word. Refused once
    the data is read, for stage 1 and for the stage-2 methods that draw class_aware, before
    any training."""
    from pathlib import Path

    from longtail.cli import main
    from longtail.data.samplers import class_aware_problem
    from tests.conftest import make_fake_fmnist

    counts = [10] * 10  # 100 draws an epoch
    assert class_aware_problem(20, counts) is None  # 5 classes an epoch: half of them
    assert class_aware_problem(21, counts) == (
        "expected at most 20, so that an epoch of 100 draws visits at least half of the 10 "
        "classes (21 of a class at a time visit 4), found 21")
    assert class_aware_problem(4, [3] * 200) is None  # 150 of 200 classes an epoch
    root = make_fake_fmnist(tmp_path / "f")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "fmnist_lt.yaml")
    data = [f"data.root={root}", "data.n_max=60", "data.n_min=2"]
    for extra, key in ((["stage1.sampler=class_aware", "stage1.samples_per_class=1048576"],
                        "stage1.samples_per_class"),
                       (["stage2.crt.sampler=class_aware", "stage2.samples_per_class=1048576"],
                        "stage2.samples_per_class")):
        capsys.readouterr()
        assert main(["run", config, *data, *extra, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"longtail: error: config key {key}: expected at most ") \
            and len(err.splitlines()) == 1, err
        assert "visit 1), found 1048576" in err and "of the 10 classes" in err
        assert not (tmp_path / "r").exists()
    # the stage-2 key alone is refused by rebalance too, before any fit (no stage 1 there)
    from longtail.config import load_config
    from longtail.pipeline import check_class_aware

    cfg = load_config(None, ["stage2.lws.sampler=class_aware", "stage2.samples_per_class=50",
                             "stage1.sampler=class_aware", "stage1.samples_per_class=50"])
    with pytest.raises(Exception, match="config key stage2.samples_per_class: expected at "
                                        "most 20"):
        check_class_aware(cfg, counts, stage1=False)
