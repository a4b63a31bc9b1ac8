"""Memory cells for the RL agents: each maps (B, T, D) inputs and a state to (B, T, H) outputs and a new state.

Running a sequence at once and stepping it one step at a time give the same outputs (the
default `forward` is a loop of `step`; lstm, gru, ffm and gtrxl run a chunk their own
faster way, tested equal): RLlib runs T = 1 on its EnvRunners and T = max_seq_len chunks
on its Learner. A state is a dict of tensors with a leading batch dimension;
`initial_state()` gives it without one (RLlib's form).

- `none`: no memory (the `mlp` agent): the output at t depends on the input at t only.
- `gru`, `lstm`: torch's `nn.GRU` / `nn.LSTM` (Cho et al., 2014; Hochreiter & Schmidhuber, 1997).
- `ffm`: Fast and Forgetful Memory (Morad et al., "Reinforcement Learning with Fast and
  Forgetful Memory", NeurIPS 2023; reference: github.com/proroklab/ffm `standalone/ffm/ffa.py`,
  `ffm.py` @ b3f94d2, the FFM the rewriting paper ran): S_t = γ ⊙ S_{t−1} + (ỹ_t ⊙ i_t)·1ᵀ,
  S ∈ ℂ^{m×c}, γ_jk = exp(a_j + i·b_k) with a and b learned; out = LN(z)⊙g + thru⊙(1−g).
- `shm`: Stable Hadamard Memory (Le et al., "Stable Hadamard Memory", ICLR 2025; reference:
  github.com/thaihungle/SHM @ 651f9e2): M_t = M_{t−1} ⊙ C_t + U_t, C_t = 1 + tanh(θ_t ⊗ v_c(x)),
  U_t = (η v) ⊗ k, h = M q; θ_t a row of a learned table of L, drawn at random every step.
- `slots`: slot memory with learned write and erase (NTM, Graves et al., 2014, eqs. 3-4):
  w = softmax(β·cos(k, M_i)), M ← M ⊙ (1 − w eᵀ) + w aᵀ, read r = softmax(β_r·cos(k_r, M))ᵀ M.
- `gtrxl`: gated transformer-XL (Parisotto et al., "Stabilizing Transformers for RL",
  ICML 2020): per layer, attention from each step to the window of the τ layer inputs before
  it and to itself, GRU-type gates in place of residuals. Gradients flow through the steps of
  the training chunk; only the memory carried in from before the chunk is stop-gradient
  (Transformer-XL's sg(M); RLlib's GTrXL: `cat(memory.detach(), inputs)`). Sizes default to
  the rewriting paper's GTrXL (2 layers, 4 heads, memory 96).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from palimpsest.rl.catalog import MEMORY_CHOICES, MEMORY_PARAMS

State = dict[str, torch.Tensor]


class MemoryCell(nn.Module):
    """(B, T, D) inputs and a state → (B, T, H) outputs and the state after the last step."""

    hidden: int

    def initial_state(self) -> State:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step: (B, D) input → (B, H) output."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        outputs = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            outputs.append(y)
        return torch.stack(outputs, dim=1), state


class NoMemory(MemoryCell):
    """The memoryless baseline: a two-layer MLP on the current input. Its one-number state is a
    constant, so every agent sees the same (B, T) batches from RLlib."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())

    def initial_state(self) -> State:
        return {"unused": torch.zeros(1)}

    def step(self, x, state):
        return self.net(x), state


class _TorchRecurrent(MemoryCell):
    """A torch recurrent layer (`layer`): a chunk runs as one call (its C++ loop over time), a step as a chunk of
    one."""

    layer: type[nn.RNNBase]

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.rnn = self.layer(inputs, hidden, batch_first=True)

    def step(self, x, state):
        y, state = self.forward(x[:, None], state)
        return y[:, 0], state


class GRUMemory(_TorchRecurrent):
    """torch's GRU as a `_TorchRecurrent`."""

    layer = nn.GRU

    def initial_state(self) -> State:
        return {"h": torch.zeros(self.hidden)}

    def forward(self, x, state):
        out, h = self.rnn(x, state["h"][None].contiguous())
        return out, {"h": h[0]}


class LSTMMemory(_TorchRecurrent):
    """torch's LSTM as a `_TorchRecurrent`."""

    layer = nn.LSTM

    def initial_state(self) -> State:
        return {"h": torch.zeros(self.hidden), "c": torch.zeros(self.hidden)}

    def forward(self, x, state):
        out, (h, c) = self.rnn(x, (state["h"][None].contiguous(), state["c"][None].contiguous()))
        return out, {"h": h[0], "c": c[0]}


# The reference FFA's bounds on the decay a (its float64 defaults, max_len 1024, fudge 0.01, forgotten_at 0.01):
FFM_A_LIMIT = math.log(float(torch.finfo(torch.float64).max)) / 1024 - 0.01  # 0.683147: a ≥ −limit
FFM_A_LOW = -FFM_A_LIMIT + 0.01  # fastest initial decay: exp(−0.673) = 0.51 per step
FFM_A_HIGH = math.log(0.01) / 1024  # slowest: a trace falls to 1% in max_period = 1024 steps


class FFMemory(MemoryCell):
    """Fast and Forgetful Memory: a complex-valued decaying aggregator with m traces × c frequencies.

    As the reference (proroklab/ffm, `standalone/ffm/ffa.py` and `ffm.py`): decay rates
    a = linspace(−0.673, ln(0.01)/1024, m) and frequencies b = 2π / linspace(min_period,
    max_period, c) are both learned parameters; a is clamped to [−0.683, −1e−8] where it is
    used (the reference's bound, ln(float64 max)/1024 − 0.01, which keeps its closed form's
    γ^−1024 finite), γ is computed in float64, the memory kept in float32 (complex64 there),
    and the output LayerNorm has no affine. Departures: the aggregator runs as the
    recurrence S_t = γ S_{t−1} + x_t at every step (the reference's chunk path uses the
    equivalent cumulative-sum closed form); the clamp is applied out of place on every
    step (the reference clamps the parameter in place on chunk calls, not on single steps).
    """

    def __init__(self, inputs: int, hidden: int, *, memory: int, context: int, min_period: float, max_period: float):
        super().__init__()
        self.hidden, self.memory, self.context = hidden, memory, context
        self.pre = nn.Linear(inputs, 2 * memory + 2 * hidden)  # ỹ (m), thru (o), gates i (m) and g (o)
        self.mix = nn.Linear(2 * memory * context, hidden)
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.a = nn.Parameter(torch.linspace(FFM_A_LOW, FFM_A_HIGH, memory))  # decay rates: negative
        self.b = nn.Parameter(2 * math.pi / torch.linspace(min_period, max_period, context))  # frequencies

    def initial_state(self) -> State:
        return {"re": torch.zeros(self.memory, self.context), "im": torch.zeros(self.memory, self.context)}

    def gamma(self) -> torch.Tensor:
        """(m, c) complex decay-and-rotation per step, exp(a_j + i b_k), from float64."""
        a = self.a.double().clamp(-FFM_A_LIMIT, -1e-8)
        return torch.exp(torch.complex(a[:, None].expand(self.memory, self.context),
                                       self.b.double()[None, :].expand(self.memory, self.context))).to(torch.complex64)

    def step(self, x, state):
        m, o = self.memory, self.hidden
        pre = self.pre(x)
        y_tilde, thru, gates = pre[:, :m], pre[:, m : m + o], pre[:, m + o :]
        i, g = torch.sigmoid(gates[:, :m]), torch.sigmoid(gates[:, m:])
        memory = torch.complex(state["re"], state["im"]) * self.gamma() + (y_tilde * i)[:, :, None]
        z = self.mix(torch.cat([memory.real, memory.imag], dim=-1).flatten(1))
        out = self.norm(z) * g + thru * (1 - g)
        return out, {"re": memory.real, "im": memory.imag}

    def forward(self, x, state):
        gamma = self.gamma()  # once per chunk
        m, o = self.memory, self.hidden
        pre = self.pre(x)  # (B, T, ·)
        written = pre[..., :m] * torch.sigmoid(pre[..., m + o : 2 * m + o])
        memory = torch.complex(state["re"], state["im"])
        memories = []
        for t in range(x.shape[1]):
            memory = memory * gamma + written[:, t, :, None]
            memories.append(memory)
        stacked = torch.stack(memories, dim=1)  # (B, T, m, c)
        z = self.mix(torch.cat([stacked.real, stacked.imag], dim=-1).flatten(2))
        g = torch.sigmoid(pre[..., 2 * m + o :])
        out = self.norm(z) * g + pre[..., m : m + o] * (1 - g)
        return out, {"re": memory.real, "im": memory.imag}


SHM_THETA = MEMORY_CHOICES[("shm", "theta")]  # the paper's random row per step; the authors' POPGym code's row 0


class StableHadamardMemory(MemoryCell):
    """SHM: a matrix memory updated by an element-wise calibration and a rank-one write.

    As the reference (github.com/thaihungle/SHM, `popgym/baselines/ray_models/ray_shm.py`):
    x̂ = LN(x); k, q = relu(W x̂) normalised to sum 1 (+1e−5); v, v_c linear; η = σ(w·x̂);
    all five without bias; θ a table of L = 128 rows, xavier-uniform; C_t = 1 + tanh(θ_t ⊗ v_c),
    M_t = M_{t−1} ⊙ C_t + (η v) ⊗ k; out = W_o (M q + shortcut(x̂)), linear.

    θ_t: the paper draws it at random from the L learned rows at every step, which keeps the
    calibration's product stable in expectation; `theta: random` does (a fresh uniform row per
    sequence and step, in training and acting, as the authors' pomdp-baselines code). The
    authors' POPGym code (which the rewriting paper ran) draws `uniform_(0, 1).long()`, i.e.
    always row 0: that is `theta: first`. Departures: no sine positional embedding on the
    input (the POPGym agent adds one), no clamp of M (pomdp-baselines clamps to ±100).
    """

    def __init__(self, inputs: int, hidden: int, *, size: int, table: int, theta: str):
        super().__init__()
        if theta not in SHM_THETA:
            raise ValueError(f"theta must be one of {', '.join(SHM_THETA)}, got {theta!r}")
        self.hidden, self.size, self.table, self.theta_rule = hidden, size, table, theta
        self.norm = nn.LayerNorm(inputs)
        self.keys = nn.Linear(inputs, 4 * size + 1, bias=False)  # k, q, v, v_c and η
        self.theta = nn.Parameter(nn.init.xavier_uniform_(torch.empty(table, size)))
        self.shortcut = nn.Linear(inputs, size)
        self.out = nn.Linear(size, hidden)

    def initial_state(self) -> State:
        return {"M": torch.zeros(self.size, self.size)}

    def calibration(self, v_c: torch.Tensor) -> torch.Tensor:
        """C_t = 1 + tanh(θ_t ⊗ v_c) for a (B, n) batch, θ_t drawn by the `theta` rule."""
        if self.theta_rule == "first":
            theta = self.theta[:1].expand(v_c.shape[0], -1)
        else:
            theta = self.theta[torch.randint(0, self.table, (v_c.shape[0],), device=v_c.device)]
        return 1 + torch.tanh(theta[:, :, None] * v_c[:, None, :])

    def step(self, x, state):
        n = self.size
        x = self.norm(x)
        parts = self.keys(x)
        k, q = F.relu(parts[:, :n]), F.relu(parts[:, n : 2 * n])
        k, q = k / (k.sum(-1, keepdim=True) + 1e-5), q / (q.sum(-1, keepdim=True) + 1e-5)
        v, v_c, eta = parts[:, 2 * n : 3 * n], parts[:, 3 * n : 4 * n], torch.sigmoid(parts[:, 4 * n :])
        memory = state["M"] * self.calibration(v_c) + (eta * v)[:, :, None] * k[:, None, :]
        h = torch.einsum("bij,bj->bi", memory, q)
        return self.out(h + self.shortcut(x)), {"M": memory}


class SlotMemory(MemoryCell):
    """N slots of width W; a controller writes with content-based weights, an erase and an add vector."""

    def __init__(self, inputs: int, hidden: int, *, slots: int, width: int):
        super().__init__()
        self.hidden, self.slots, self.width = hidden, slots, width
        self.controller = nn.Sequential(nn.Linear(inputs + width, hidden), nn.ReLU())
        self.heads = nn.Linear(hidden, 4 * width + 2)  # write key, erase, add, read key; β_w, β_r
        self.out = nn.Linear(hidden + width, hidden)

    def initial_state(self) -> State:
        # Small distinct slot contents: cosine addressing of all-zero slots would be undefined.
        slots = torch.linspace(0.01, 0.02, self.slots * self.width).reshape(self.slots, self.width)
        return {"M": slots, "r": torch.zeros(self.width)}

    @staticmethod
    def _address(memory, key, strength):
        similarity = F.cosine_similarity(memory, key[:, None, :], dim=-1, eps=1e-6)  # (B, N)
        return torch.softmax(F.softplus(strength) * similarity, dim=-1)

    def step(self, x, state):
        w = self.width
        h = self.controller(torch.cat([x, state["r"]], dim=-1))
        heads = self.heads(h)
        write_key, erase, add, read_key = (heads[:, i * w : (i + 1) * w] for i in range(4))
        write = self._address(state["M"], write_key, heads[:, 4 * w : 4 * w + 1])
        memory = state["M"] * (1 - write[:, :, None] * torch.sigmoid(erase)[:, None, :]) \
            + write[:, :, None] * torch.tanh(add)[:, None, :]
        read = self._address(memory, read_key, heads[:, 4 * w + 1 :])
        r = torch.einsum("bn,bnw->bw", read, memory)
        return F.relu(self.out(torch.cat([h, r], dim=-1))), {"M": memory, "r": r}


class _GatedLayer(nn.Module):
    """One GTrXL layer: gated attention from each step to [the window of past layer inputs, itself], then a
    gated MLP. Keys and values of the memory carried in from before the chunk carry no gradient (sg(M));
    those of the chunk's own steps do (Transformer-XL: gradients flow within the segment)."""

    def __init__(self, width: int, heads: int, window: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.heads = heads
        # Relative position: a learned bias per head and distance 0..τ (T5-style), in place of
        # Transformer-XL's sinusoidal relative encoding; attention would otherwise ignore order.
        self.distance_bias = nn.Parameter(torch.zeros(heads, window + 1))
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.gate1, self.gate2 = _GRUGate(width), _GRUGate(width)

    def _split(self, x):  # (B, L, D) → (B, H, L, D/H)
        b, length, d = x.shape
        return x.view(b, length, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, e, memory, valid):
        """e: (B, T, D) this layer's inputs; memory: (B, τ, D) the window before step 0; valid: (B, τ) bool.

        Step t attends to the τ entries before it in [memory, e] (the window the step-by-step
        form would hold at t) and to itself; all T steps at once.
        """
        b, steps, d = e.shape
        window = memory.shape[1]
        q, k_self, v_self = (self._split(part) for part in self.qkv(self.norm1(e)).chunk(3, dim=-1))
        past = self.norm1(torch.cat([memory.detach(), e], dim=1))  # sg(M) for the carried memory only
        _, k_past, v_past = (self._split(part) for part in self.qkv(past).chunk(3, dim=-1))
        scale = (d // self.heads) ** -0.5
        t = torch.arange(steps, device=e.device)[:, None]
        j = torch.arange(window + steps, device=e.device)[None, :]
        distance = (window + t - j).clamp(0, window)  # step t sits at position τ + t of [memory, e]
        scores = torch.einsum("bhtd,bhjd->bhtj", q, k_past) * scale + self.distance_bias[:, distance]
        allowed = (j >= t) & (j < t + window)  # the τ entries before step t (position τ + t is t itself)
        allowed = allowed[None] & torch.cat([valid, torch.ones(b, steps, dtype=torch.bool, device=e.device)], 1)[:, None]
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        own = (q * k_self).sum(-1, keepdim=True) * scale + self.distance_bias[:, None, :1]  # (B, H, T, 1)
        weights = torch.softmax(torch.cat([scores, own], dim=-1), dim=-1)
        attended = torch.einsum("bhtj,bhjd->bhtd", weights[..., :-1], v_past) + weights[..., -1:] * v_self
        attended = self.proj(attended.transpose(1, 2).reshape(b, steps, d))
        y = self.gate1(e, F.relu(attended))
        return self.gate2(y, F.relu(self.mlp(self.norm2(y))))


class _GRUGate(nn.Module):
    """g(x, y) = (1 − z)⊙x + z⊙ĥ with GRU-type reset and update gates; b_g = 2 starts near identity."""

    def __init__(self, width: int, bias: float = 2.0):
        super().__init__()
        self.w = nn.Linear(width, 3 * width, bias=False)
        self.u = nn.Linear(width, 2 * width, bias=False)
        self.u_h = nn.Linear(width, width, bias=False)
        self.bias = bias

    def forward(self, x, y):
        wr, wz, wh = self.w(y).chunk(3, dim=-1)
        ur, uz = self.u(x).chunk(2, dim=-1)
        r, z = torch.sigmoid(wr + ur), torch.sigmoid(wz + uz - self.bias)
        return (1 - z) * x + z * torch.tanh(wh + self.u_h(r * x))


class GatedTransformerXL(MemoryCell):
    """Layers of `_GatedLayer`; the state is each layer's window of its last τ inputs and which slots are filled.

    A chunk of T steps runs layer by layer, all steps at once (a sliding-window mask), which
    gives the outputs stepping one step at a time gives (tested); in training the gradient of
    step t reaches every earlier step of the chunk within the window, not the carried memory.

    Defaults are the rewriting paper's GTrXL (github.com/Quartz-Admirer/Adaptive-Memory-Envs
    @ e12158a, `episodic-transformer-memory-ppo-main-checkpoint/configs/endless_tmaze.yaml`:
    2 blocks, 4 heads, memory_length 96); its width is the job's (parameter-matched, or
    `hidden`; the paper's is 256). Departures from that code (MarcoMeter's episodic TrXL):
    a step attends to itself as well as the 96 before it (there: the 95 before it only);
    positions enter as a learned per-head bias by distance (there: none); the gate bias is
    Parisotto's fixed b_g = 2 (there: learned from 0.2); a ReLU before each gate and a
    two-layer position-wise MLP, as Parisotto (there: no ReLU, one layer); one LayerNorm for
    queries and memory (there: two); the gate weights are torch's default init (there: xavier).
    """

    def __init__(self, inputs: int, hidden: int, *, layers: int, heads: int, window: int):
        super().__init__()
        self.hidden, self.layers, self.window = hidden, layers, window
        self.embed = nn.Linear(inputs, hidden)
        self.blocks = nn.ModuleList(_GatedLayer(hidden, heads, window) for _ in range(layers))

    def initial_state(self) -> State:
        return {"memory": torch.zeros(self.layers, self.window, self.hidden), "valid": torch.zeros(self.window)}

    def forward(self, x, state):
        e = self.embed(x)  # (B, T, D)
        valid = state["valid"] > 0.5
        windows = []
        for l, block in enumerate(self.blocks):
            # The window after the chunk: the last τ of [window, this layer's inputs].
            windows.append(torch.cat([state["memory"][:, l], e], dim=1)[:, -self.window :])
            e = block(e, state["memory"][:, l], valid)
        filled = torch.cat([state["valid"], torch.ones_like(x[:, :, 0])], dim=1)[:, -self.window :]
        return e, {"memory": torch.stack(windows, dim=1), "valid": filled}

    def step(self, x, state):
        y, state = self.forward(x[:, None], state)
        return y[:, 0], state


MEMORIES = {"none": NoMemory, "gru": GRUMemory, "lstm": LSTMMemory, "ffm": FFMemory,
            "shm": StableHadamardMemory, "slots": SlotMemory, "gtrxl": GatedTransformerXL}


def make_cell(kind: str, inputs: int, hidden: int, memory: dict | None = None) -> MemoryCell:
    """The memory cell `kind` (a value of `rl.catalog.AGENTS`) with its arguments: the catalog's defaults
    (`MEMORY_PARAMS`, the one place they are written) with `memory`'s in their place."""
    return MEMORIES[kind](inputs, hidden, **{**MEMORY_PARAMS[kind], **dict(memory or {})})
