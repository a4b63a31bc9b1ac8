"""Memory cells for the RL agents: each maps (B, T, D) inputs and a state to (B, T, H) outputs and a new state.

Every cell steps through time one step at a time (a loop over T), so running a sequence
at once and stepping it one step at a time give the same outputs: RLlib runs T = 1 on
its EnvRunners and T = max_seq_len chunks on its Learner. A state is a dict of tensors
with a leading batch dimension; `initial_state()` gives it without one (RLlib's form).

- `none`: no memory (the `mlp` agent): the output at t depends on the input at t only.
- `gru`, `lstm`: torch's cells (Cho et al., 2014; Hochreiter & Schmidhuber, 1997).
- `ffm`: Fast and Forgetful Memory (Morad et al., "Reinforcement Learning with Fast and
  Forgetful Memory", NeurIPS 2023): S_t = γ ⊙ S_{t−1} + (ỹ_t ⊙ i_t)·1ᵀ, S ∈ ℂ^{m×c},
  γ_jk = exp(a_j + i·b_k), a < 0 learned, b_k fixed frequencies; out = LN(z)⊙g + thru⊙(1−g).
- `shm`: Stable Hadamard Memory (Le et al., "Stable Hadamard Memory", ICLR 2025):
  M_t = M_{t−1} ⊙ C_t + U_t, C_t = 1 + tanh(θ_t ⊗ v_c(x)), U_t = (η v) ⊗ k, h = M q.
  θ_t is row (t mod L) of a learned table (our reading: the authors' code always reads
  row 0 by an indexing slip; the paper samples rows); t is carried in the state.
- `slots`: slot memory with learned write and erase (NTM, Graves et al., 2014, eqs. 3-4):
  w = softmax(β·cos(k, M_i)), M ← M ⊙ (1 − w eᵀ) + w aᵀ, read r = softmax(β_r·cos(k_r, M))ᵀ M.
- `gtrxl`: gated transformer-XL (Parisotto et al., "Stabilizing Transformers for RL",
  ICML 2020): per layer, attention from the step's input to a window of the last τ layer
  inputs (the memory, no gradient through it) and GRU-type gates in place of residuals
  (gate bias 2), relative positions as a learned per-head bias by distance (T5-style, in
  place of Transformer-XL's sinusoidal encoding). The window and which of its slots are
  filled are the state; a chunk runs all its steps at once under a sliding-window mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

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


class GRUMemory(MemoryCell):
    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.cell = nn.GRUCell(inputs, hidden)

    def initial_state(self) -> State:
        return {"h": torch.zeros(self.hidden)}

    def step(self, x, state):
        h = self.cell(x, state["h"])
        return h, {"h": h}


class LSTMMemory(MemoryCell):
    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(inputs, hidden)

    def initial_state(self) -> State:
        return {"h": torch.zeros(self.hidden), "c": torch.zeros(self.hidden)}

    def step(self, x, state):
        h, c = self.cell(x, (state["h"], state["c"]))
        return h, {"h": h, "c": c}


class FFMemory(MemoryCell):
    """Fast and Forgetful Memory: a complex-valued decaying aggregator with m traces × c frequencies."""

    def __init__(self, inputs: int, hidden: int, memory: int = 32, context: int = 4, min_period: float = 1.0,
                 max_period: float = 1024.0, limit: float = 0.1):
        super().__init__()
        self.hidden, self.memory, self.context, self.limit = hidden, memory, context, limit
        self.pre = nn.Linear(inputs, 2 * memory + 2 * hidden)  # ỹ (m), thru (o), gates i (m) and g (o)
        self.mix = nn.Linear(2 * memory * context, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.a = nn.Parameter(torch.linspace(-limit, -1e-3, memory))  # decay rates: negative
        self.register_buffer("b", 2 * math.pi / torch.linspace(min_period, max_period, context))

    def initial_state(self) -> State:
        return {"re": torch.zeros(self.memory, self.context), "im": torch.zeros(self.memory, self.context)}

    def step(self, x, state):
        m, o = self.memory, self.hidden
        pre = self.pre(x)
        y_tilde, thru, gates = pre[:, :m], pre[:, m : m + o], pre[:, m + o :]
        i, g = torch.sigmoid(gates[:, :m]), torch.sigmoid(gates[:, m:])
        a = self.a.clamp(-self.limit, -1e-8)
        gamma = torch.exp(torch.complex(a[:, None].expand(m, self.context), self.b[None, :].expand(m, self.context)))
        memory = torch.complex(state["re"], state["im"]) * gamma + (y_tilde * i)[:, :, None]
        z = self.mix(torch.cat([memory.real, memory.imag], dim=-1).flatten(1))
        out = self.norm(z) * g + thru * (1 - g)
        return out, {"re": memory.real, "im": memory.imag}


class StableHadamardMemory(MemoryCell):
    """SHM: a matrix memory updated by an element-wise calibration and a rank-one write."""

    def __init__(self, inputs: int, hidden: int, size: int = 16, table: int = 128):
        super().__init__()
        self.hidden, self.size, self.table = hidden, size, table
        self.norm = nn.LayerNorm(inputs)
        self.keys = nn.Linear(inputs, 4 * size + 1)  # k, q, v, v_c and η
        self.theta = nn.Parameter(torch.randn(table, size) / math.sqrt(size))
        self.out = nn.Linear(size + inputs, hidden)  # h = M q, plus a shortcut from the input

    def initial_state(self) -> State:
        return {"M": torch.zeros(self.size, self.size), "t": torch.zeros(1)}

    def step(self, x, state):
        n = self.size
        parts = self.keys(self.norm(x))
        k, q = F.relu(parts[:, :n]), F.relu(parts[:, n : 2 * n])
        k, q = k / (k.sum(-1, keepdim=True) + 1e-6), q / (q.sum(-1, keepdim=True) + 1e-6)
        v, v_c, eta = parts[:, 2 * n : 3 * n], parts[:, 3 * n : 4 * n], torch.sigmoid(parts[:, 4 * n :])
        theta = self.theta[state["t"][:, 0].long() % self.table]  # (B, n): row t mod L
        calibration = 1 + torch.tanh(theta[:, :, None] * v_c[:, None, :])
        memory = state["M"] * calibration + (eta * v)[:, :, None] * k[:, None, :]
        h = torch.einsum("bij,bj->bi", memory, q)
        return F.relu(self.out(torch.cat([h, x], dim=-1))), {"M": memory, "t": state["t"] + 1}


class SlotMemory(MemoryCell):
    """N slots of width W; a controller writes with content-based weights, an erase and an add vector."""

    def __init__(self, inputs: int, hidden: int, slots: int = 8, width: int = 16):
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
    gated MLP. Keys and values of the window carry no gradient (sg(M)); the step's own do."""

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
        past = self.norm1(torch.cat([memory, e], dim=1).detach())  # sg(M): weights learn, inputs do not
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
    gives what stepping one step at a time gives (tested, outputs and gradients).
    """

    def __init__(self, inputs: int, hidden: int, layers: int = 2, heads: int = 4, window: int = 16):
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
