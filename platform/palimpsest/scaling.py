"""What a job needs from its Ray cluster, checked against what the cluster has or can become.

A job's need is the resource bundles Ray must place together: a Ray Train run's workers
(`scaling.num_workers` × `ScalingSpec.worker_resources()`), or one Tune trial's (an rl trial:
RLlib's own request for its PPO config, `rl.ppo.trial_bundles`; a trial of a search over a
Train kind: its Train workers). It is checked once Ray is up, before any folder is written:

- A cluster without an autoscaler (a local Ray, a fixed set of nodes): the bundles must pack
  into the nodes that are up, or the job is refused (exit 2): it would wait forever.
- A cluster with an autoscaler: against the node types it may start. A job that no node type
  can hold, or that needs more than their `max_workers` reach, is refused in seconds. One the
  cluster can become is asked of the autoscaler as a pending placement group of the job's
  bundles (its demand, added to any other job's) and waited for, up to `scaling.wait_timeout_s`,
  with a line saying what it waits for; then the group is removed (the job's own placement
  groups take the nodes, and further trials' pending groups drive the autoscaler on).

The node types come from Ray's autoscaler state API (`ray._private.state.state.get_cluster_config()`,
the cluster config Ray Data also reads). In Ray 2.60 only KubeRay fills it: a cluster started by
`ray up` (autoscaler v1) reports nothing there, so the types are read from the autoscaler's own
config on the head — the file its monitor process was started with (`--autoscaling-config`),
by a zero-CPU task pinned to the head node.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

HEAD_RESOURCE = "node:__internal_head__"
SHOWN = ("CPU", "GPU")  # Ray's per-node bookkeeping (memory, object store, node:IP) is not a job's concern
WAIT_LINE_EVERY_S = 15.0


class ClusterTooSmall(Exception):
    """The cluster cannot hold the job, now or ever, or did not grow in time: one line for the user (exit 2)."""


@dataclass(frozen=True)
class Need:
    """Bundles Ray places together for one job (or one trial of it), and the fields that set them."""

    bundles: tuple[dict, ...]
    source: str
    per: str = "job"  # or "trial"

    @property
    def total(self) -> dict[str, float]:
        return add(*self.bundles)


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict
    max_workers: float  # math.inf: no bound


@dataclass
class Cluster:
    """What the cluster holds now, and — where an autoscaler runs — the node types it may start."""

    nodes: list[dict]  # each alive node's total resources
    node_types: list[NodeType] | None = None  # None: no autoscaler; []: one whose node types could not be read
    head: dict = field(default_factory=dict)

    @property
    def autoscaled(self) -> bool:
        return self.node_types is not None

    @property
    def now(self) -> dict[str, float]:
        return add(*self.nodes)

    def capacity(self) -> dict[str, float]:
        """The most the cluster can hold: the nodes up now, or the head plus every worker type at its max_workers."""
        if not self.node_types:
            return self.now
        reach = dict(self.head)
        for node_type in self.node_types:
            for name, amount in node_type.resources.items():
                if amount > 0:  # (an unbounded type, max_workers inf, reaches inf)
                    reach[name] = reach.get(name, 0.0) + amount * node_type.max_workers
        return {name: max(amount, self.now.get(name, 0.0)) for name, amount in reach.items()}


# ----------------------------------------------------------------------------- needs


def add(*bundles: dict) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            total[name] = total.get(name, 0.0) + float(amount)
    return total


def show(resources: dict) -> str:
    """{CPU: 2, GPU: 1} as "2 CPU, 1 GPU" (CPU and GPU first, Ray's own node resources left out)."""
    names = [n for n in SHOWN if resources.get(n)] + sorted(n for n in resources if n not in SHOWN
                                                            and not _internal(n) and resources[n])
    return ", ".join(f"{resources[n]:g} {n}" for n in names) or "nothing"


def describe(bundles) -> str:
    """Bundles grouped: "2 × (1 CPU, 1 GPU)"."""
    counts = Counter(tuple(sorted(b.items())) for b in bundles)
    return " + ".join(f"{count} × ({show(dict(shape))})" for shape, count in counts.items())


def _internal(name: str) -> bool:
    return name.startswith("node:") or name in ("memory", "object_store_memory")


def job_need(spec, *, search: bool = False, prepared=None) -> Need:
    """The bundles one run of `spec` (one trial, for a search or an rl job) holds at once."""
    if spec.kind == "rl":
        return rl_trial_need(spec, prepared)
    scaling = spec.scaling
    source = "scaling.num_workers × scaling.cpus_per_worker" + (" and gpus_per_worker" if scaling.use_gpu else "")
    if scaling.resources_per_worker:
        source += " and resources_per_worker"
    return Need(tuple(scaling.worker_resources() for _ in range(scaling.num_workers)), source,
                "trial" if search else "job")


def rl_trial_need(spec, prepared=None) -> Need:
    """The largest trial of an rl job (agents may carry their own ppo settings): RLlib's own request."""
    import json

    from palimpsest.rl.ppo import trial_bundles

    if prepared is None:
        from palimpsest.rl.plan import plan_trials

        prepared = plan_trials(spec)
    largest, seen = None, set()
    for trial in prepared.trials:
        key = json.dumps(trial["ppo"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        bundles = tuple(trial_bundles(trial))
        if largest is None or _size(add(*bundles)) > _size(add(*largest)):
            largest = bundles
    return Need(largest, "ppo.num_env_runners, ppo.num_cpus_per_env_runner and ppo.num_gpus_per_learner", "trial")


def _size(resources: dict) -> tuple:
    return (resources.get("GPU", 0.0), resources.get("CPU", 0.0), sum(resources.values()))


# ----------------------------------------------------------------------------- fitting


def fits(bundle: dict, node: dict) -> bool:
    return all(node.get(name, 0.0) >= amount - 1e-9 for name, amount in bundle.items() if amount > 0)


def pack(bundles, nodes: list[dict]) -> bool:
    """Whether the bundles pack into the nodes (first fit, largest first: Ray's PACK places them so or better)."""
    free = [dict(node) for node in nodes]
    for bundle in sorted(bundles, key=lambda b: _size(b), reverse=True):
        for node in free:
            if fits(bundle, node):
                for name, amount in bundle.items():
                    node[name] = node.get(name, 0.0) - amount
                break
        else:
            return False
    return True


def trials_at_once(need: Need, capacity: dict) -> tuple[int, str | None]:
    """How many trials of `need` the capacity holds side by side, and the resource that bounds it."""
    bound, limit = math.inf, None
    for name, amount in need.total.items():
        if amount <= 0 or _internal(name) or math.isinf(capacity.get(name, 0.0)):
            continue
        fit = math.floor(capacity.get(name, 0.0) / amount + 1e-9)
        if fit < bound:
            bound, limit = fit, name
    return (max(1, int(bound)) if bound != math.inf else 1), limit


def refusal(need: Need, cluster: Cluster) -> str | None:
    """Why the cluster can never hold `need` (None: it holds it now, or its autoscaler can start nodes that do)."""
    what = f"{need.source}: each {need.per} needs {describe(need.bundles)}"
    if not cluster.autoscaled:
        if pack(need.bundles, cluster.nodes):
            return None
        return (f"{what}, but the Ray cluster's nodes hold {_nodes(cluster.nodes)} and it has no autoscaler to "
                "add more")
    if not cluster.node_types:  # an autoscaler runs but its node types could not be read: wait and see
        return None
    shapes = [t.resources for t in cluster.node_types] + cluster.nodes
    for bundle in need.bundles:
        if not any(fits(bundle, shape) for shape in shapes):
            largest = max(cluster.node_types, key=lambda t: _size(t.resources), default=None)
            biggest = f"{largest.name}, {show(largest.resources)}" if largest else "none"
            return (f"{what}; no node type of the cluster's autoscaler holds ({show(bundle)}) (largest node type: "
                    f"{biggest})")
    reach = cluster.capacity()
    short = [name for name, amount in need.total.items() if not _internal(name) and reach.get(name, 0.0) < amount - 1e-9]
    if short:
        return (f"{what}, {show(need.total)} at once; the cluster reaches {show(reach)} at most with every node "
                f"type at its max_workers ({', '.join(f'{t.name} ≤ {t.max_workers:g}' for t in cluster.node_types)})")
    return None


def _nodes(nodes: list[dict]) -> str:
    shown = [f"({show(n)})" for n in nodes if show(n) != "nothing"]
    return " + ".join(shown) if shown else "no CPU or GPU"


# ----------------------------------------------------------------------------- the cluster


def cluster_now(*, local: bool) -> Cluster:
    """The alive nodes' resources and, unless Ray runs here only for this job, the autoscaler's node types."""
    import ray

    nodes, head = [], {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = {k: float(v) for k, v in (node.get("Resources") or {}).items()}
        nodes.append(resources)
        if HEAD_RESOURCE in resources:
            head = {k: v for k, v in resources.items() if not _internal(k)}
    return Cluster(nodes, None if local else autoscaler_node_types(), head)


def autoscaler_node_types(timeout_s: float = 60.0) -> list[NodeType] | None:
    """The worker node types the cluster's autoscaler may start: None where no autoscaler runs (or none that
    scales), [] where one runs whose node types could not be read."""
    import ray

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older GCS without the autoscaler state service
        config = None
    if config is not None and config.node_group_configs:
        types = [NodeType(g.name, {k: float(v) for k, v in g.resources.items()},
                          math.inf if g.max_count < 0 else float(g.max_count)) for g in config.node_group_configs]
    else:
        probe = ray.remote(_head_autoscaling_config).options(num_cpus=0, resources={HEAD_RESOURCE: 0.001},
                                                             max_retries=0)
        try:
            found = ray.get(probe.remote(ray.get_runtime_context().gcs_address), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - the head could not say
            found = None
        if found is None:  # no monitor process found there: an autoscaler elsewhere (a KubeRay sidecar)?
            return [] if _autoscaler_reports() else None
        if not found.get("available_node_types"):  # a monitor without a config: a fixed cluster
            return None
        head_type = found.get("head_node_type")
        types = [NodeType(name, {k: float(v) for k, v in (t.get("resources") or {}).items()},
                          float(t.get("max_workers", found.get("max_workers", 0)) or 0))
                 for name, t in (found.get("available_node_types") or {}).items() if name != head_type]
    types = [t for t in types if t.max_workers > 0 and any(v > 0 for k, v in t.resources.items() if not _internal(k))]
    return types or None


def _autoscaler_reports() -> bool:
    """Whether an autoscaler has reported to this cluster's GCS (its status names node types it manages)."""
    import json

    try:
        from ray.experimental.internal_kv import _internal_kv_get

        status = json.loads(_internal_kv_get("__autoscaling_status") or b"{}")
    except Exception:  # noqa: BLE001
        return False
    report = status.get("autoscaler_report") or {}
    return bool(report.get("pending_launches") or any(name != "ray.head.default" and "head" not in name
                                                      for name in (report.get("active_nodes") or {})))


def _head_autoscaling_config(gcs_address: str) -> dict | None:
    """On the head node: the config file the autoscaler's monitor (of this cluster's GCS) was started with."""
    import os

    import yaml

    port = gcs_address.rsplit(":", 1)[-1]
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                words = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(w.endswith("monitor.py") for w in words):
            continue
        if not any(w.startswith("--gcs-address") and w.endswith(":" + port) for w in words) and \
                not any(w.endswith(":" + port) for w in words):
            continue
        path = next((w.split("=", 1)[1] for w in words if w.startswith("--autoscaling-config=")), None)
        if path is None and "--autoscaling-config" in words:
            path = words[words.index("--autoscaling-config") + 1]
        if not path:
            return {}  # a monitor without a config: no autoscaling
        try:
            with open(os.path.expanduser(path)) as handle:
                config = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError):
            return None
        return {key: config.get(key) for key in ("available_node_types", "head_node_type", "max_workers")}
    return None


# ----------------------------------------------------------------------------- waiting

_CHECKED: Cluster | None = None  # the cluster as the last check left it (a search sizes its concurrency on it)


def check_cluster(spec, *, search: bool, local: bool, say: Callable[[str], None], prepared=None) -> Cluster:
    """The job's need against the cluster Ray is connected to: refused, held, or waited for (ClusterTooSmall)."""
    global _CHECKED
    need = job_need(spec, search=search, prepared=prepared)
    cluster = ensure(need, cluster_now(local=local), wait_timeout_s=spec.scaling.wait_timeout_s, say=say)
    _CHECKED = cluster
    return cluster


def capacity() -> dict[str, float]:
    """What the connected cluster can hold: as the last check found it (with its autoscaler's reach), else now."""
    return (_CHECKED or cluster_now(local=True)).capacity()



def ensure(need: Need, cluster: Cluster, *, wait_timeout_s: float, say: Callable[[str], None],
           refresh: Callable[[], Cluster] | None = None, poll_s: float = 1.0) -> Cluster:
    """Refuse a job the cluster can never hold; where an autoscaler runs and the nodes up cannot hold it yet,
    ask for it as a pending placement group and wait (ClusterTooSmall after wait_timeout_s). Returns the cluster
    as it then is."""
    reason = refusal(need, cluster)
    if reason:
        raise ClusterTooSmall(reason)
    if not cluster.autoscaled or pack(need.bundles, cluster.nodes):
        return cluster
    from ray.util.placement_group import placement_group, remove_placement_group

    refresh = refresh or (lambda: Cluster(cluster_now(local=True).nodes, cluster.node_types, cluster.head))
    started = time.monotonic()
    # The job's own demand, as its placement group: the autoscaler adds up every pending group (a second
    # job waiting meanwhile keeps its own), and the group goes with this driver if it is stopped.
    group = placement_group([dict(b) for b in need.bundles], strategy="PACK")
    try:
        last_line = -math.inf
        while True:
            placed = _placed(group, poll_s)
            waited = time.monotonic() - started
            cluster = refresh()
            if placed or pack(need.bundles, cluster.nodes):
                say(f"the autoscaler started the nodes after {waited:.0f} s; the cluster holds {show(cluster.now)}")
                return cluster
            if waited >= wait_timeout_s:
                raise ClusterTooSmall(
                    f"scaling.wait_timeout_s: waited {wait_timeout_s:g} s for the autoscaler to start nodes for "
                    f"{describe(need.bundles)}; the cluster still holds {show(cluster.now)}. {_why()}")
            if waited - last_line >= WAIT_LINE_EVERY_S:
                last_line = waited
                say(f"waiting for the autoscaler to start nodes for {describe(need.bundles)} ({need.source}); the "
                    f"cluster holds {show(cluster.now)} · {waited:.0f} s of {wait_timeout_s:g} s "
                    "(scaling.wait_timeout_s)")
    finally:
        try:
            remove_placement_group(group)  # the job's own groups take the nodes from here
        except Exception:  # noqa: BLE001 - the connection went with an interrupt; the group goes with the job
            pass


def _placed(group, wait_s: float) -> bool:
    import ray

    try:
        ray.get(group.ready(), timeout=wait_s)
        return True
    except ray.exceptions.GetTimeoutError:
        return False


def _why() -> str:
    """What the autoscaler last reported about failed or pending launches, or where to look."""
    import json

    try:
        from ray.experimental.internal_kv import _internal_kv_get

        status = json.loads(_internal_kv_get("__autoscaling_status") or b"{}")
        error = _internal_kv_get("__autoscaling_error")
    except Exception:  # noqa: BLE001 - the status is a courtesy
        status, error = {}, None
    report = status.get("autoscaler_report") or {}
    parts = []
    if error:
        parts.append(f"the autoscaler failed: {error.decode(errors='replace').splitlines()[-1]}")
    if report.get("failed_nodes"):
        parts.append(f"failed launches: {report['failed_nodes']}")
    if report.get("pending_launches"):
        parts.append(f"launches still pending: {report['pending_launches']}")
    parts.append("`ray status` on the head and its autoscaler log (/tmp/ray/session_latest/logs/monitor.*) say why "
                 "(cloud quota, no capacity for the instance type, a failing setup command)")
    return "; ".join(parts)
