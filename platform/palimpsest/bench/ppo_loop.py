"""A bare PyTorch PPO loop (CleanRL-style: one file, no Ray, no RLlib): the baseline of the `ppo` bench section.

It trains what a benchmark trial trains, on the same footing: the same agent (`MemoryAgent`
with the trial's model config), the same env (its batched twin, `num_envs_per_env_runner`
sub-envs), the same batch (`train_batch_size` env steps per iteration), epochs, minibatch,
learning rate, clipping, value and entropy coefficients, GAE (γ, λ), one torch thread. What
it leaves out is everything RLlib adds around the maths: connectors, episode objects,
metrics, actors.

Recurrent training follows RLlib's form (so a transformer keeps its gradient through the
chunk): each sub-env's rollout is cut into sequences at episode starts and every
`max_seq_len` steps, zero-padded, each starting from the memory state the rollout held at
its first step. With NEXT_STEP autoreset, the step after an episode's end only restarts the
sub-env; it is not a transition and is neither trained on nor counted. Truncation is treated
as termination (no bootstrap), and advantages are standardised over the batch.
"""

from __future__ import annotations

import time

import numpy as np


def _chunks(valid: np.ndarray, starts: np.ndarray, length: int) -> list[tuple[int, int, int]]:
    """(sub-env, first step, steps) of each training sequence: a new one at each episode start and every `length`
    valid steps of an episode; invalid (restart) steps belong to none."""
    found = []
    steps, envs = valid.shape
    for n in range(envs):
        first, count = None, 0
        for t in range(steps):
            if not valid[t, n]:
                if first is not None:
                    found.append((n, first, count))
                first, count = None, 0
                continue
            if first is None or starts[t, n] or count == length:
                if first is not None:
                    found.append((n, first, count))
                first, count = t, 0
            count += 1
        if first is not None:
            found.append((n, first, count))
    return found


def train(trial: dict, iterations: int, *, seed: int = 0) -> dict:
    """`iterations` PPO iterations (rollout, GAE, epochs of minibatch updates); steps/s over all but the first."""
    import torch
    from ray.rllib.core.columns import Columns

    from palimpsest.rl.envs import make_vec
    from palimpsest.rl.module import MemoryAgent

    ppo = trial["ppo"]
    torch.manual_seed(seed)
    envs_n = ppo["num_envs_per_env_runner"]
    horizon = max(1, ppo["train_batch_size"] // envs_n)
    length = trial["max_seq_len"]
    envs = make_vec(trial["env_id"], envs_n, **trial["env_params"])
    module = MemoryAgent(observation_space=envs.single_observation_space, action_space=envs.single_action_space,
                         model_config={"agent": trial["agent"], "hidden": trial["hidden"], "max_seq_len": length,
                                       "memory": dict(trial["memory"])})
    optimizer = torch.optim.Adam(module.parameters(), lr=ppo["lr"])
    initial = {k: torch.as_tensor(v) for k, v in module.get_initial_state().items()}
    state = {k: v.expand(envs_n, *v.shape).clone() for k, v in initial.items()}
    obs, _ = envs.reset(seed=seed)
    pending = np.zeros(envs_n, dtype=bool)  # the sub-env ended last step: this step restarts it
    starting = np.ones(envs_n, dtype=bool)  # this step is an episode's first
    walls, counted = [], []
    gamma, lam = ppo["gamma"], ppo["lambda_"]
    for _ in range(iterations):
        began = time.perf_counter()
        obs_buf = np.zeros((horizon, envs_n, *envs.single_observation_space.shape), dtype=np.float32)
        act_buf = np.zeros((horizon, envs_n), dtype=np.int64)
        logp_buf, val_buf, rew_buf = (np.zeros((horizon, envs_n), dtype=np.float32) for _ in range(3))
        done_buf, valid_buf, start_buf = (np.zeros((horizon, envs_n), dtype=bool) for _ in range(3))
        state_buf = {k: torch.zeros(horizon, *v.shape) for k, v in state.items()}
        module.eval()
        with torch.no_grad():
            for t in range(horizon):
                fresh = torch.as_tensor(starting)
                for k in state:  # an episode starts from the initial state
                    state[k][fresh] = initial[k]
                    state_buf[k][t] = state[k]
                observation = torch.as_tensor(obs, dtype=torch.float32)
                embeddings, state = module._trunk({Columns.OBS: observation[:, None], Columns.STATE_IN: state})
                logits = module.policy(embeddings[:, 0])
                dist = torch.distributions.Categorical(logits=logits)
                action = dist.sample()
                obs_buf[t], act_buf[t] = obs, action.numpy()
                logp_buf[t], val_buf[t] = dist.log_prob(action).numpy(), module.value(embeddings[:, 0])[:, 0].numpy()
                valid_buf[t], start_buf[t] = ~pending, starting & ~pending
                obs, reward, terminated, truncated, _ = envs.step(act_buf[t])
                ended = (terminated | truncated) & ~pending
                rew_buf[t], done_buf[t] = reward, ended
                starting = pending.copy()  # the step after a restart is the new episode's first
                pending = ended
            embeddings, _ = module._trunk({Columns.OBS: torch.as_tensor(obs, dtype=torch.float32)[:, None],
                                           Columns.STATE_IN: state})
            next_value = module.value(embeddings[:, 0])[:, 0].numpy() * ~(pending | starting)
        # GAE over each sub-env's valid steps (restart steps are skipped: their neighbour ended the episode).
        advantages = np.zeros((horizon, envs_n), dtype=np.float32)
        next_advantage = np.zeros(envs_n, dtype=np.float32)
        for t in reversed(range(horizon)):
            live = 1.0 - done_buf[t]
            delta = rew_buf[t] + gamma * next_value * live - val_buf[t]
            advantage = delta + gamma * lam * live * next_advantage
            advantages[t] = np.where(valid_buf[t], advantage, 0.0)
            next_value = np.where(valid_buf[t], val_buf[t], next_value)
            next_advantage = np.where(valid_buf[t], advantage, next_advantage)
        returns = advantages + val_buf
        valid_adv = advantages[valid_buf]  # standardised over the batch's transitions
        advantages = (advantages - valid_adv.mean()) / (valid_adv.std() + 1e-8)
        # Sequences: zero-padded chunks, each from the state the rollout held at its first step.
        chunks = _chunks(valid_buf, start_buf, length)
        count = len(chunks)
        index_t = np.zeros((count, length), dtype=np.int64)
        index_n = np.zeros((count, length), dtype=np.int64)
        mask = np.zeros((count, length), dtype=bool)
        for c, (n, first, steps) in enumerate(chunks):
            index_t[c, :steps], index_n[c, :steps], mask[c, :steps] = np.arange(first, first + steps), n, True
        seq = {"obs": torch.as_tensor(obs_buf[index_t, index_n] * mask[..., None]),
               "act": torch.as_tensor(act_buf[index_t, index_n]), "logp": torch.as_tensor(logp_buf[index_t, index_n]),
               "adv": torch.as_tensor(advantages[index_t, index_n]), "ret": torch.as_tensor(returns[index_t, index_n]),
               "mask": torch.as_tensor(mask)}
        starts_t = torch.as_tensor([first for _, first, _ in chunks])
        starts_n = torch.as_tensor([n for n, _, _ in chunks])
        seq_state = {k: v[starts_t, starts_n] for k, v in state_buf.items()}
        module.train()
        per_batch = max(1, ppo["minibatch_size"] // length)
        for _ in range(ppo["num_epochs"]):
            order = torch.randperm(count)
            for begin in range(0, count, per_batch):
                pick = order[begin : begin + per_batch]
                m = seq["mask"][pick]
                embeddings, _ = module._trunk({Columns.OBS: seq["obs"][pick],
                                               Columns.STATE_IN: {k: v[pick] for k, v in seq_state.items()}})
                dist = torch.distributions.Categorical(logits=module.policy(embeddings))
                logp = dist.log_prob(seq["act"][pick])
                adv = seq["adv"][pick]
                ratio = torch.exp(logp - seq["logp"][pick])
                clip = ppo["clip_param"]
                surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
                value = module.value(embeddings)[..., 0]
                loss = (-surrogate + ppo["vf_loss_coeff"] * (value - seq["ret"][pick]) ** 2
                        - ppo["entropy_coeff"] * dist.entropy())[m].mean()
                optimizer.zero_grad()
                loss.backward()
                if ppo.get("grad_clip"):
                    torch.nn.utils.clip_grad_norm_(module.parameters(), ppo["grad_clip"])
                optimizer.step()
        walls.append(time.perf_counter() - began)
        counted.append(int(valid_buf.sum()))
    envs.close()
    wall = sum(walls[1:])
    return {"env_steps": sum(counted[1:]), "wall_s": wall, "steps_per_s": sum(counted[1:]) / wall,
            "iteration_s": walls, "warmup_env_steps": counted[0], "module": module}
