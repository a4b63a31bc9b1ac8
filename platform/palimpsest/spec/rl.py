"""`kind: rl` — the memory-rewriting RL benchmark: agents × environments × seeds, PPO through Ray Tune.

Imports gymnasium and the environments (numpy only) to check environment arguments, never
torch or ray.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from palimpsest.rl.catalog import AGENTS, MEMORY_CHOICES, MEMORY_PARAMS
from palimpsest.spec.common import Strict, WaitSpec, _suggest
from palimpsest.spec.base import NAME_PATTERN
from palimpsest.spec.search import TuneSpec
from palimpsest.spec.tracking import TrackingSpec
from palimpsest.storage import check_storage_path



class RLHeldOut(Strict):
    """A held-out setting of an environment: the trained module is tested on it, never trained or selected on it."""

    label: str = Field(pattern=NAME_PATTERN, description="its name in results (e.g. long, n6)")
    params: dict[str, Any] = Field(description="arguments that replace the training setting's (the rest are kept)")


class RLEnvEntry(Strict):
    """One environment setting: a registered id and its arguments, and the held-out settings it is tested on."""

    id: str = Field(description="a registered Gymnasium id with Discrete actions and Box observations: ours "
                                "(palimpsest envs lists them), Gymnasium's, POPGym's (popgym extra)")
    params: dict[str, Any] = Field(default_factory=dict, description="arguments of gymnasium.make(id, ...)")
    label: str | None = Field(None, pattern=NAME_PATTERN, description="the setting's name in results; default: "
                                                                     "the id's short name and the arguments")
    held_out: list[RLHeldOut] = Field(default_factory=list, description="settings the chosen module is also "
                                      "tested on (interpolation, extrapolation): each its label and the arguments "
                                      "it changes")
    eval_params: dict[str, Any] | None = Field(None, description="shorthand for one held-out setting labelled "
                                               "'eval': the arguments it changes")

    @field_validator("id")
    @classmethod
    def _registered(cls, value):
        from palimpsest.rl.envs import check_id

        return check_id(value)

    @model_validator(mode="before")
    @classmethod
    def _eval_params(cls, data):
        """`eval_params: {...}` is `held_out: [{label: eval, params: {...}}]` (resolved specs hold the latter)."""
        if isinstance(data, dict) and data.get("eval_params") is not None:
            held = list(data.get("held_out") or [])
            if any(isinstance(h, dict) and h.get("label") == "eval" for h in held):
                raise ValueError("eval_params: a held_out setting is already labelled 'eval'")
            data = {**data, "held_out": [*held, {"label": "eval", "params": data["eval_params"]}], "eval_params": None}
        return data

    @model_validator(mode="after")
    def _arguments(self):
        spaces = _check_arguments(self.id, self.params, "params")
        labels = [h.label for h in self.held_out]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(f"held_out: each label once ({', '.join(repeated)} repeated)")
        for i, (label, params) in enumerate(self.held_out_params()):
            where = f"held_out[{i}] ({label}).params"
            theirs = _check_arguments(self.id, params, where)
            if theirs != spaces:
                raise ValueError(f"{where}: the setting's observation and action spaces {theirs} differ from the "
                                 f"training setting's {spaces}: a trained module cannot act in it")
        if self.label is None:
            self.label = self.short_name + "".join(f"_{k}{_compact(v)}" for k, v in self.params.items())
        return self

    def held_out_params(self) -> list[tuple[str, dict]]:
        """(label, the complete arguments) of each held-out setting."""
        return [(h.label, {**self.params, **h.params}) for h in self.held_out]

    @property
    def short_name(self) -> str:
        return self.id.split("/", 1)[-1].rsplit("-v", 1)[0]

    @property
    def settings(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params.items()) or "defaults"


# PPO fields that set a trial's resources (its runners, CPUs and GPUs, checked against the cluster): one value per job.
AGENT_FIXED_PPO = {"num_env_runners", "num_cpus_per_env_runner", "num_gpus_per_learner"}


def _read_agent_ppo(path: str) -> dict:
    """{agent: {ppo field: value}} from an agent_ppo file (a ValueError naming the field if it is not one)."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"agent_ppo: no file {path}")
    try:
        document = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"agent_ppo: {path} is not YAML: {error}") from None
    if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
        raise ValueError(f"agent_ppo: {path} must map each agent to its PPO settings ({{lstm: {{lr: 0.001}}}})")
    return document


def _check_arguments(env_id: str, params: dict, where: str) -> tuple:
    """(observation shape, number of actions) of the env built with `params`; a ValueError naming `where`."""
    from palimpsest.rl.envs import check_arguments

    return check_arguments(env_id, params, where)


def _compact(value) -> str:
    """A parameter value as label characters (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "", str(value).replace("/", "-"))


class RLAgentEntry(Strict):
    """A memory agent by name, with its cell's own arguments."""

    name: str = Field(description=f"one of {', '.join(AGENTS)}")
    memory: dict[str, Any] = Field(default_factory=dict, description="the memory cell's arguments (README)")
    hidden: int | None = Field(None, ge=1, le=4096, description="width; default: matched to the job's parameters")
    label: str | None = Field(None, pattern=NAME_PATTERN, description="its name in results; default: name")
    ppo: dict[str, Any] = Field(default_factory=dict, description="this agent's PPO settings in place of the job's "
                                "(e.g. {lr: 1e-3, entropy_coeff: 0.01}); any ppo field except the runner counts")

    @field_validator("name")
    @classmethod
    def _known(cls, value):
        if value not in AGENTS:
            raise ValueError(f"unknown agent '{value}'" + _suggest(value, list(AGENTS)))
        return value

    @model_validator(mode="after")
    def _memory_arguments(self):
        allowed = MEMORY_PARAMS[AGENTS[self.name]]
        unknown = sorted(set(self.memory) - set(allowed))
        if unknown:
            raise ValueError(f"memory: {self.name} takes no {', '.join(unknown)}; allowed: "
                             f"{', '.join(allowed) or 'nothing'}")
        for key, value in self.memory.items():
            choices = MEMORY_CHOICES.get((AGENTS[self.name], key))
            if choices is not None:
                if value not in choices:
                    raise ValueError(f"memory.{key}: got {value!r}" + _suggest(str(value), list(choices)))
                continue
            whole = isinstance(allowed[key], int)  # counts and sizes take integers; rates and periods any number
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value <= 0:
                raise ValueError(f"memory.{key}: a positive {'integer' if whole else 'number'}, got {value!r}")
        if self.name == "gtrxl" and self.hidden is not None and self.hidden % int(self.memory.get("heads", 4)):
            raise ValueError(f"hidden: {self.hidden} must be a multiple of memory.heads")
        if self.label is None:
            self.label = self.name
        return self


class PPOSpec(Strict):
    """PPO (Schulman et al., 2017) on RLlib's new API stack; one learner on the trial's CPU."""

    lr: float = Field(3e-4, gt=0, description="Adam learning rate")
    gamma: float = Field(0.99, gt=0, le=1, description="discount")
    lambda_: float = Field(0.95, ge=0, le=1, description="GAE λ")
    clip_param: float = Field(0.2, gt=0, description="PPO's clipping ε")
    entropy_coeff: float = Field(0.01, ge=0)
    vf_loss_coeff: float = Field(0.5, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="global gradient-norm clip; null: none")
    num_epochs: int = Field(10, ge=1, description="passes over each train batch")
    minibatch_size: int = Field(256, ge=1, description="timesteps per SGD minibatch")
    train_batch_size: int = Field(2048, ge=1, description="timesteps sampled per iteration")
    max_seq_len: int = Field(32, ge=1, le=1024, description="chunk length the recurrent state is trained through")
    num_env_runners: int = Field(0, ge=0, le=1024, description="sampling actors per trial (0: sample in the trial itself)")
    num_cpus_per_env_runner: float = Field(1.0, gt=0, description="CPUs each env runner holds")
    num_gpus_per_learner: float = Field(0.0, ge=0, le=1, description="GPUs the trial's learner holds (0: it learns "
                                        "on the trial's CPU; RLlib's one learner uses one GPU at most); a fraction "
                                        "shares one GPU between trials")
    num_envs_per_env_runner: int = Field(32, ge=1, le=8192, description="sub-envs of the batched twin stepped per "
                                                                         "runner")

    @model_validator(mode="after")
    def _minibatch(self):
        if self.minibatch_size > self.train_batch_size:
            raise ValueError(f"minibatch_size: {self.minibatch_size} is larger than train_batch_size "
                             f"({self.train_batch_size})")
        return self


class RLBudget(Strict):
    """How long each trial trains."""

    env_steps: int = Field(200_000, ge=1, description="environment steps per trial")
    stop_success: float | None = Field(None, gt=0, le=1, description="stop a trial early once its greedy success "
                                                                     "rate reaches this; null: the whole budget")


class RLEvaluation(Strict):
    """Greedy evaluation (argmax actions) on episodes never trained on; the best evaluation's module is kept and
    tested on fresh episodes (its test success rate is the headline)."""

    every: int = Field(5, ge=1, description="training iterations between evaluations")
    episodes: int = Field(100, ge=1, le=100_000, description="episodes per evaluation")
    test_episodes: int = Field(1000, ge=1, le=100_000, description="fresh episodes the chosen module is tested on, "
                               "per setting (the headline)")


class RLJob(Strict):
    """`kind: rl` — agents × environments × seeds trained with PPO, trials in parallel through Ray Tune."""

    kind: Literal["rl"]
    name: str = Field("rl", pattern=NAME_PATTERN, description="run name (folder prefix)")
    seed: int = Field(0, ge=0, le=100_000, description="the first trial seed; trials use seed, seed+1, …")
    seeds: int = Field(3, ge=1, le=1000, description="seeds per agent and environment")
    agents: list[RLAgentEntry] = Field(min_length=1)
    envs: list[RLEnvEntry] = Field(min_length=1)
    parameters: int | None = Field(20_000, ge=16, description="parameter budget every agent's width is matched to; "
                                                              "null: every agent at `hidden`")
    hidden: int = Field(64, ge=1, le=4096, description="width of every agent when parameters is null")
    ppo: PPOSpec = Field(default_factory=PPOSpec)
    agent_ppo: str | None = Field(None, description="a YAML file of per-agent PPO settings ({agent: {lr: …, "
                                  "entropy_coeff: …}}, as an rl search over agents.0.name writes it: "
                                  "agent_ppo.yaml); an agent entry's own ppo values win")
    budget: RLBudget = Field(default_factory=RLBudget)
    evaluation: RLEvaluation = Field(default_factory=RLEvaluation)
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as the cluster's CPUs "
                                              "and GPUs hold")
    scaling: WaitSpec = Field(default_factory=WaitSpec)
    max_failures: int = Field(0, ge=0, description="restarts of a failed trial from its last evaluation")
    storage_path: str | None = Field(None, description="Ray Tune storage (shared on a cluster); default: inside "
                                                       "the run folder")
    tune: TuneSpec | None = Field(None, description="search this job's fields with Ray Tune (palimpsest tune)")
    tracking: TrackingSpec | None = Field(None, description="experiment tracking: MLflow, TensorBoard, W&B "
                                                          "(docs/tracking.md)")

    @field_validator("agents", mode="before")
    @classmethod
    def _names_or_mappings(cls, value):
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("envs", mode="before")
    @classmethod
    def _ids_or_mappings(cls, value):
        return [{"id": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("storage_path")
    @classmethod
    def _absolute(cls, value):
        # Stored absolute, so `run --resume` from another folder finds the same experiment; a URI stays.
        return check_storage_path(value)

    @model_validator(mode="after")
    def _distinct_labels(self):
        for field, labels in (("agents", [a.label for a in self.agents]), ("envs", [e.label for e in self.envs])):
            repeated = sorted({x for x in labels if labels.count(x) > 1})
            if repeated:
                raise ValueError(f"{field}: each label once ({', '.join(repeated)} repeated; set label: to tell "
                                 "them apart)")
        trials = [f"{a.label}-{e.label}" for a in self.agents for e in self.envs]
        clash = sorted({x for x in trials if trials.count(x) > 1})
        if clash:  # trial folders and checkpoints are named agent-env-s<seed>
            raise ValueError(f"agents, envs: the labels make the same trial name {', '.join(clash)}; set label: to "
                             "tell them apart")
        return self

    @model_validator(mode="after")
    def _gtrxl_width(self):
        for i, agent in enumerate(self.agents):
            heads = int(agent.memory.get("heads", MEMORY_PARAMS["gtrxl"]["heads"]))
            if agent.name == "gtrxl" and self.parameters is None and agent.hidden is None and self.hidden % heads:
                raise ValueError(f"hidden: {self.hidden} is not a multiple of agents[{i}] (gtrxl)'s {heads} heads")
        return self

    @model_validator(mode="after")
    def _agent_ppo(self):
        settings: dict = {}
        if self.agent_ppo is not None:
            settings = _read_agent_ppo(self.agent_ppo)
            # stored absolute (a resumed or copied spec reads the same file); no revalidation on this assignment
            self.__dict__["agent_ppo"] = str(Path(self.agent_ppo).expanduser().resolve())
        for i, agent in enumerate(self.agents):
            chosen = {**(settings.get(agent.label) or settings.get(agent.name) or {}), **agent.ppo}
            fixed = sorted(set(chosen) & AGENT_FIXED_PPO)
            if fixed:
                raise ValueError(f"agents[{i}].ppo: {', '.join(fixed)} is the trial's runner layout and is set for "
                                 "every agent in ppo: (it decides each trial's CPUs)")
            try:
                PPOSpec.model_validate({**self.ppo.model_dump(), **chosen})
            except ValueError as error:
                first = error.errors()[0] if hasattr(error, "errors") else {"loc": (), "msg": str(error)}
                where = ".".join(str(p) for p in first["loc"])
                unknown = first.get("type") == "extra_forbidden"
                message = "unknown key" if unknown else first["msg"].removeprefix("Value error, ")
                raise ValueError(f"agents[{i}].ppo{'.' + where if where else ''}: {message}"
                                 + (_suggest(where, list(PPOSpec.model_fields)) if unknown else "")) from None
            if chosen != agent.ppo:
                agent.__dict__["ppo"] = chosen  # (no revalidation: the merged values were just checked)
        return self

    def agent_ppo_spec(self, index: int) -> PPOSpec:
        """The PPO settings of agents[index]: the job's, with the agent's own in their place."""
        return PPOSpec.model_validate({**self.ppo.model_dump(), **self.agents[index].ppo})

    @property
    def trial_seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    # What a trial of a search reports, per greedy evaluation (spec/tuning.py: units, units_done).
    def trial_units(self) -> int:
        iterations = math.ceil(self.budget.env_steps / self.ppo.train_batch_size)
        return math.ceil(iterations / self.evaluation.every)

    def units_done(self, report: dict) -> int:
        # an evaluation every `every` iterations, and one at the (possibly early) end; the trial's
        # PPO iteration is kept in its checkpoint, so a final report counts what it did too
        return math.ceil(report.get("iteration", 0) / self.evaluation.every)

    def search_problems(self) -> list[str]:
        return [f"{field}: a search trains one agent on one environment setting with one seed per trial ({count} "
                "given)" for field, count in (("agents", len(self.agents)), ("envs", len(self.envs)),
                                              ("seeds", self.seeds)) if count != 1]

    def reads_training_data(self, metric: str) -> bool:
        return False

    def search_document(self) -> dict:
        """The resolved job without its tune section: what each trial of a search starts from. A label that is
        only the agent's name follows the name (a search over agents.0.name)."""
        document = self.model_dump(mode="json")
        document.pop("tune", None)
        for agent in document["agents"]:
            if agent.get("label") == agent["name"]:
                agent.pop("label")
        return document
