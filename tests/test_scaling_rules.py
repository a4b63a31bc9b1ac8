"""The resource rules of palimpsest.scaling on clusters described by hand (no Ray): what a job needs,
whether nodes hold it, what an autoscaler's node types reach, how many trials run at once."""

from __future__ import annotations

import math

import pytest

from palimpsest.scaling import Cluster, ClusterTooSmall, Need, NodeType, ensure, job_need, pack, refusal, \
    trials_at_once
from palimpsest.spec import parse_spec

QUICK = {"kind": "continual", "name": "q", "stream": {"source": "factworld", "num_entities": 8, "num_tasks": 2},
         "methods": ["naive"], "training": {"steps": 4, "batch_size": 8}}
HEAD = {"node:__internal_head__": 1.0, "memory": 1e9}
GPU1 = NodeType("gpu1", {"CPU": 8.0, "GPU": 1.0}, 4)
CPU2 = NodeType("cpu2", {"CPU": 2.0}, 1)


def need(bundles, per="job") -> Need:
    return Need(tuple(bundles), "scaling.x", per)


def test_a_train_jobs_need_is_its_workers_with_their_gpus_and_custom_resources():
    spec = parse_spec({**QUICK, "scaling": {"num_workers": 2, "cpus_per_worker": 3, "use_gpu": True,
                                            "gpus_per_worker": 0.5, "resources_per_worker": {"fast_disk": 1}}})
    found = job_need(spec)
    assert found.bundles == ({"CPU": 3.0, "GPU": 0.5, "fast_disk": 1.0},) * 2 and found.per == "job"
    assert job_need(parse_spec(QUICK), search=True).bundles == ({"CPU": 1.0},) and \
        job_need(parse_spec(QUICK), search=True).per == "trial"


def test_resources_per_worker_refuses_cpu_and_gpu_naming_the_fields_that_set_them():
    from palimpsest.spec import SpecError

    with pytest.raises(SpecError, match="GPU: set by use_gpu and gpus_per_worker"):
        parse_spec({**QUICK, "scaling": {"resources_per_worker": {"GPU": 1}}})


def test_bundles_pack_into_nodes_whole_never_split_across_two():
    two_ones = [{"CPU": 1.0}, {"CPU": 1.0}]
    assert pack([{"CPU": 1.0}, {"CPU": 1.0}], two_ones)
    assert not pack([{"CPU": 2.0}], two_ones)  # 2 CPUs in all, but no node holds the bundle
    assert pack([{"CPU": 2.0}], [{"CPU": 2.0}])  # exactly full
    assert not pack([{"CPU": 1.0, "GPU": 1.0}], [{"CPU": 8.0}])
    # largest first: a first fit in the given order would put the 1 on the 3 and strand the 3
    assert pack([{"CPU": 1.0}, {"CPU": 3.0}], [{"CPU": 3.0}, {"CPU": 1.0}])


def test_a_fixed_cluster_refuses_what_its_nodes_cannot_hold_and_names_them():
    cluster = Cluster([HEAD, {"CPU": 3.0, "GPU": 2.0}])
    assert refusal(need([{"CPU": 1.0, "GPU": 1.0}] * 2), cluster) is None
    assert refusal(need([{"CPU": 1.0, "GPU": 3.0}]), cluster) == (
        "scaling.x: each job needs 1 × (1 CPU, 3 GPU), but the Ray cluster's nodes hold (3 CPU, 2 GPU) and it has "
        "no autoscaler to add more")


def test_an_autoscaling_cluster_refuses_only_what_no_node_type_holds_or_reaches():
    empty = Cluster([HEAD], [GPU1, CPU2], head={})
    assert refusal(need([{"CPU": 1.0, "GPU": 1.0}] * 4), empty) is None  # 4 gpu1 nodes may start
    assert refusal(need([{"CPU": 8.0, "GPU": 1.0}]), empty) is None  # exactly a gpu1 node
    assert refusal(need([{"CPU": 4.0, "GPU": 2.0}]), empty) == (
        "scaling.x: each job needs 1 × (4 CPU, 2 GPU); no node type of the cluster's autoscaler holds "
        "(4 CPU, 2 GPU) (largest node type: gpu1, 8 CPU, 1 GPU)")
    assert refusal(need([{"CPU": 1.0, "GPU": 1.0}] * 5), empty) == (
        "scaling.x: each job needs 5 × (1 CPU, 1 GPU), 5 CPU, 5 GPU at once; the cluster reaches 34 CPU, 4 GPU at "
        "most with every node type at its max_workers (gpu1 ≤ 4, cpu2 ≤ 1)")
    assert empty.capacity() == {"CPU": 34.0, "GPU": 4.0}


def test_trials_at_once_is_the_floor_over_every_resource_a_trial_holds():
    assert trials_at_once(need([{"CPU": 1.0, "GPU": 1.0}]), {"CPU": 16.0, "GPU": 2.0}) == (2, "GPU")
    assert trials_at_once(need([{"CPU": 3.0}]), {"CPU": 8.0, "GPU": 2.0}) == (2, "CPU")
    assert trials_at_once(need([{"CPU": 1.0}, {"CPU": 1.0}]), {"CPU": 4.0}) == (2, "CPU")  # a trial's bundles add up
    assert trials_at_once(need([{"CPU": 4.0}]), {"CPU": 2.0}) == (1, "CPU")  # never 0: the check refused it before


def test_ensure_refuses_in_seconds_and_does_not_wait_for_what_is_up():
    lines = []
    up = Cluster([HEAD, {"CPU": 2.0}], [CPU2])
    assert ensure(need([{"CPU": 2.0}]), up, wait_timeout_s=1, say=lines.append) is up and lines == []
    with pytest.raises(ClusterTooSmall, match="no node type of the cluster's autoscaler holds"):
        ensure(need([{"CPU": 3.0}]), Cluster([HEAD], [CPU2]), wait_timeout_s=1, say=lines.append)
    assert lines == []


def test_unbounded_node_types_and_unread_ones_never_crash_or_refuse():
    unbounded = Cluster([HEAD], [NodeType("any", {"CPU": 4.0, "GPU": 0.0}, math.inf)])
    assert unbounded.capacity()["CPU"] == math.inf and "GPU" not in unbounded.capacity()  # (no 0 × inf)
    assert trials_at_once(need([{"CPU": 1.0}]), unbounded.capacity()) == (1, None)  # no floor(inf): Tune decides
    assert refusal(need([{"CPU": 64.0}] * 2), unbounded) == (
        "scaling.x: each job needs 2 × (64 CPU); no node type of the cluster's autoscaler holds (64 CPU) (largest "
        "node type: any, 4 CPU)")
    unread = Cluster([HEAD], [])  # an autoscaler reports, its types unknown: wait, refuse nothing
    assert unread.autoscaled and refusal(need([{"CPU": 64.0}]), unread) is None


def test_a_bundles_accelerator_type_is_named_in_a_refusal():
    cluster = Cluster([HEAD], [GPU1])
    assert refusal(need([{"CPU": 1.0, "GPU": 1.0, "accelerator_type:H100": 0.001}]), cluster) == (
        "scaling.x: each job needs 1 × (1 CPU, 1 GPU, 0.001 accelerator_type:H100); no node type of the cluster's "
        "autoscaler holds (1 CPU, 1 GPU, 0.001 accelerator_type:H100) (largest node type: gpu1, 8 CPU, 1 GPU)")


def test_a_search_cannot_vary_a_trials_resources():
    from palimpsest.spec import SpecError

    with pytest.raises(SpecError, match=r"tune.space: scaling.num_workers: a trial's resources are one size"):
        parse_spec({**QUICK, "tune": {"space": {"scaling.num_workers": {"grid": [1, 2]}}, "metric": "acc",
                                      "mode": "max"}})
