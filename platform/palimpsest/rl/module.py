"""The memory agents as RLlib new-API-stack RLModules: encoder → memory cell → policy and value heads.

One class serves every agent; `model_config["memory"]` names the cell (`rl/memory.py`):
mlp (no memory), lstm, gru, gtrxl, ffm, shm, slots. RLlib hands the module (B, T, obs)
batches with one state per sequence (T = 1 on EnvRunners, zero-padded chunks of
`max_seq_len` on the Learner, which must be in `model_config`); the state is the cell's,
as a dict of tensors with a batch dimension. PPO's value function shares the trunk.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

from palimpsest.rl.catalog import AGENTS
from palimpsest.rl.memory import make_cell


class _NotRLlibsOwnDeprecation(logging.Filter):
    """RLlib 2.60's `RLModule.__init__` builds its own deprecated `RLModuleConfig` ("TODO (sven): Deprecate
    this", rl_module.py), so every module logs "RLModule(config=[RLModuleConfig object]) has been deprecated"
    though none of ours passes a config: dropped, the only message dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "RLModule(config=[RLModuleConfig object])" not in record.getMessage()


_deprecations = logging.getLogger("ray._common.deprecation")
if not any(isinstance(f, _NotRLlibsOwnDeprecation) for f in _deprecations.filters):
    _deprecations.addFilter(_NotRLlibsOwnDeprecation())


class MemoryAgent(TorchRLModule, ValueFunctionAPI):
    """model_config: agent (one of AGENTS), hidden (width), max_seq_len, memory (the cell's own arguments)."""

    def setup(self):
        config = self.model_config
        agent = config["agent"]  # (the job's spec holds every default: rl/plan.py fills these in)
        if agent not in AGENTS:
            raise ValueError(f"unknown agent {agent!r}; allowed: {', '.join(AGENTS)}")
        hidden = int(config["hidden"])
        inputs = int(np.prod(self.observation_space.shape))
        self.encoder = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU())
        self.memory = make_cell(AGENTS[agent], hidden, hidden, config.get("memory"))
        self.policy = nn.Linear(hidden, self.action_space.n)
        self.value = nn.Linear(hidden, 1)

    def get_initial_state(self) -> dict:
        return {key: value.numpy() for key, value in self.memory.initial_state().items()}

    def _trunk(self, batch) -> tuple[torch.Tensor, dict]:
        observations = batch[Columns.OBS].float()
        features = self.encoder(observations.flatten(2))  # (B, T, hidden)
        return self.memory(features, dict(batch[Columns.STATE_IN]))

    def _forward(self, batch, **kwargs) -> dict:
        embeddings, state = self._trunk(batch)
        return {Columns.ACTION_DIST_INPUTS: self.policy(embeddings), Columns.STATE_OUT: state}

    def _forward_train(self, batch, **kwargs) -> dict:
        embeddings, state = self._trunk(batch)
        return {Columns.ACTION_DIST_INPUTS: self.policy(embeddings), Columns.STATE_OUT: state,
                Columns.EMBEDDINGS: embeddings}

    def compute_values(self, batch, embeddings=None) -> torch.Tensor:
        if embeddings is None:
            embeddings, _ = self._trunk(batch)
        return self.value(embeddings).squeeze(-1)
