"""`rmu`: Representation Misdirection for Unlearning.

Li et al., "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning",
2024, Sec. 5 (RMU). At one decoder layer ℓ, the residual-stream activations h_θ(x) of
forget tokens are pushed toward a fixed random direction, while those of retain tokens
are held at the frozen model's:
    L = mean‖h_θ(x_f) − c·u‖² + α·mean‖h_θ(x_r) − h_frozen(x_r)‖²,
u = a uniform [0, 1) vector normalised to unit length, drawn once (seeded), c the
steering coefficient; only the MLP output projections of layers ℓ−2..ℓ are trained. The
authors' Zephyr-7B settings are the defaults (ℓ = 7, c = 6.5, α = 1200); a small model
needs a lower `layer`. Means are over answer tokens and hidden units (open-unlearning's
RMU), then over items; "frozen" is the model as the request began.
"""

from __future__ import annotations

import torch

from palimpsest.models import unwrap
from palimpsest.train.methods import WHOLE_WEIGHTS_BACKENDS, MethodInfo, Param
from palimpsest.train.sampling import derive_seed
from palimpsest.unlearn.base import FORGET, RETAIN, FrozenStart, UnlearningMethod

METHOD = MethodInfo(
    name="rmu", family="unlearning", implementation="RMU",
    summary="steer layer-ℓ activations of forget tokens to c·u; hold retain activations at the frozen model's",
    paper="Li et al., 2024 (WMDP)",
    params=(
        Param("layer", "int", 7, "ℓ, the decoder layer (0-based) whose output is steered", low=0),
        Param("trainable_layers", "int_list", None, "layers whose mlp.down_proj is trained; null: ℓ−2..ℓ",
              nullable=True),
        Param("steering_coeff", "float", 6.5, "c, the length of the control vector", low=0, low_open=True),
        Param("retain_weight", "float", 1200.0, "α, the weight of the retain activation loss", low=0),
    ),
    **WHOLE_WEIGHTS_BACKENDS,
    projectable=True,
    gu_refusal="GU replaces a method's retain term by α × the mean answer-NLL gradient of retain items, so RMU "
               "would lose its activation-matching retain loss and train another objective (with α = 1200 on an "
               "NLL); serve rmu without gu",
)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a transformers causal LM (Llama-style `model.layers`, GPT-2's `transformer.h`)."""
    model = unwrap(model)
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        found = model
        for name in path.split("."):
            found = getattr(found, name, None)
        if isinstance(found, torch.nn.ModuleList):
            return found
    raise ValueError(f"rmu: cannot find the decoder layers of {type(model).__name__}")


def control_vector(hidden_size: int, seed: int, coeff: float) -> torch.Tensor:
    """c·u with u uniform on [0, 1)^d, normalised to unit length (seeded: the same on every rank and restart)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "rmu-control") % (2**63))
    u = torch.rand(hidden_size, generator=generator)
    return coeff * u / u.norm()


class _Capture:
    """Keeps the output activations of one module from its last forward pass."""

    def __init__(self, module: torch.nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.value = output[0] if isinstance(output, tuple) else output


class RMU(UnlearningMethod):
    def __init__(self, layer: int, trainable_layers: list[int] | None, steering_coeff: float, retain_weight: float):
        self.layer, self.steering_coeff, self.retain_weight = layer, steering_coeff, retain_weight
        self.trainable_layers = list(trainable_layers) if trainable_layers is not None else \
            [i for i in range(layer - 2, layer + 1) if i >= 0]
        self.frozen = FrozenStart()
        self._current: _Capture | None = None
        self._frozen: _Capture | None = None
        self._control: torch.Tensor | None = None

    def before_task(self, ctx) -> None:
        layers = decoder_layers(ctx.model)
        wanted = [self.layer, *self.trainable_layers]
        if max(wanted) >= len(layers):
            raise ValueError(f"rmu: the model has {len(layers)} decoder layers (0..{len(layers) - 1}); "
                             f"layer / trainable_layers ask for {max(wanted)}")
        trainable = {id(layers[i].mlp.down_proj.weight) for i in self.trainable_layers}
        for param in ctx.model.parameters():
            param.requires_grad_(id(param) in trainable)
        frozen = self.frozen.take(ctx)
        self._current = _Capture(layers[self.layer])
        self._frozen = _Capture(decoder_layers(frozen)[self.layer])
        hidden = layers[self.layer].mlp.down_proj.weight.shape[0]
        self._control = control_vector(hidden, ctx.seed, self.steering_coeff).to(ctx.device)

    def after_task(self, ctx) -> None:
        for capture in (self._current, self._frozen):
            if capture is not None:
                capture.handle.remove()
        for param in ctx.model.parameters():
            param.requires_grad_(True)

    @staticmethod
    def _per_item(diff: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) mean over answer tokens and hidden units of the squared difference."""
        per_token = (diff ** 2).mean(dim=-1) * mask
        return per_token.sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    def _answer_mask(self, micro, rows) -> torch.Tensor:
        return (micro.inputs["labels"][rows] != -100).float()

    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        rows = micro.rows(FORGET)
        activations = self._current.value[rows]
        per_item = self._per_item(activations - self._control, self._answer_mask(micro, rows))
        return micro.item_mean(FORGET, per_item.sum())

    def retain_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        if not self.uses_retain():
            return micro.token_losses.new_zeros(())
        rows = micro.rows(RETAIN)
        activations = self._current.value[rows]
        if not rows.any():  # this rank's shard holds no retain rows
            return activations.sum() * 0.0
        with torch.no_grad():
            self.frozen.model(input_ids=micro.inputs["input_ids"][rows],
                              attention_mask=micro.inputs["attention_mask"][rows])
        per_item = self._per_item(activations - self._frozen.value, self._answer_mask(micro, rows))
        return self.retain_weight * micro.item_mean(RETAIN, per_item.sum())
