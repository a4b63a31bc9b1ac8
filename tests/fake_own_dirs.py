"""Ray's fake multi-node provider (the one Ray tests its autoscaler with), each node it starts with
its own temp dir, as a machine of its own has.

Ray's provider starts every fake node in the head's temp dir, so all nodes share one
`runtime_resources/` folder; a node setting up a job's working_dir for its first worker deletes
and unpacks it again there (working_dir's `overwrite=True`), pulling the directory out from under
the job's driver on the head (its cwd). Real nodes have disks of their own. Loaded by the head's
autoscaler (`provider: {type: external, module: fake_own_dirs.OwnDirsProvider}`, this folder on
the head's PYTHONPATH).
"""

from __future__ import annotations

import itertools
import os

import ray._private.parameter as parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

_numbers = itertools.count(1)


class OwnDirsProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        temp_dir = f"{self.provider_config['node_temp_prefix']}{next(_numbers)}"
        os.makedirs(temp_dir, exist_ok=True)
        original = parameter.RayParams

        def own_dir(*args, **kwargs):
            return original(*args, **{**kwargs, "temp_dir": temp_dir})

        parameter.RayParams = own_dir
        try:
            super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
        finally:
            parameter.RayParams = original
