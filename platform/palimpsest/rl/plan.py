"""An rl job's trials: every agent × environment setting × seed, widths matched to the parameter budget.

`runners/rl.py` runs them; `scaling.py` sizes the cluster from them (RLlib's request per trial).
"""

from __future__ import annotations

from dataclasses import dataclass

from palimpsest.data import DataError
from palimpsest.spec.rl import RLJob


@dataclass
class PreparedRL:
    trials: list[dict]


def plan_trials(spec: RLJob) -> PreparedRL:
    """Every trial's configuration, widths matched to the parameter budget.

    Raises:
        DataError: an agent's memory arguments do not build.
    """
    import numpy as np

    from palimpsest.rl.envs import make
    from palimpsest.rl.ppo import evaluation_seeds
    from palimpsest.rl.sizing import matched_width, parameter_count

    trials = []
    for e, env in enumerate(spec.envs):
        probe = make(env.id, **env.params)
        obs_dim, actions = int(np.prod(probe.observation_space.shape)), int(probe.action_space.n)
        probe.close()
        for a, agent in enumerate(spec.agents):
            try:
                hidden = agent.hidden or (matched_width(agent.name, spec.parameters, obs_dim, actions, agent.memory)
                                          if spec.parameters else spec.hidden)
                count = parameter_count(agent.name, hidden, obs_dim, actions, agent.memory)
            except (TypeError, ValueError, RuntimeError) as error:
                raise DataError(f"agents[{a}].memory: {agent.name} does not build with {agent.memory}: {error}") \
                    from None
            held = env.held_out_params()
            ppo = spec.agent_ppo_spec(a)
            for seed in spec.trial_seeds:
                seeds = evaluation_seeds(seed, len(held))
                trials.append({
                    "label": f"{agent.label}-{env.label}-s{seed}", "agent_label": agent.label, "agent": agent.name,
                    "memory": dict(agent.memory), "hidden": hidden, "parameters": count,
                    "env_id": env.id, "env": env.short_name, "env_label": env.label, "settings": env.settings,
                    "env_params": dict(env.params), "seed": seed,
                    "eval_seed": seeds[0], "test_seed": seeds[1],
                    "held_out": [{"label": label, "env_params": params, "seed": s}
                                 for (label, params), s in zip(held, seeds[2:])],
                    "max_seq_len": ppo.max_seq_len, "ppo": ppo.model_dump(),
                    "budget": spec.budget.model_dump(), "evaluation": spec.evaluation.model_dump(),
                })
    return PreparedRL(trials)
