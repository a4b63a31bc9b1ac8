"""Membership inference on answer tokens: is this question/answer pair in the training set?

Three attacks, each a score per example oriented so that HIGHER means "more likely a member":
- loss: Yeom et al., "Privacy Risk in Machine Learning: Analyzing the Connection to
  Overfitting", 2018 — the loss-threshold attack; score = -(mean token NLL).
- zlib: Carlini et al., "Extracting Training Data from Large Language Models", 2021,
  §5.1 — log-perplexity over zlib entropy; score = -(mean NLL / len(zlib.compress(text))),
  the entropy in bytes as in their code.
- min_k: Shi et al., "Detecting Pretraining Data from Large Language Models", 2023,
  Min-K% Prob (eq. 1) — the mean of the k-fraction lowest token log-probabilities.
- min_k_plus_plus (when z-scores are given): Zhang et al., "Min-K%++: Improved Baseline for
  Detecting Pre-Training Data from Large Language Models", 2024 (eq. 2) — Min-K% over each
  token's log-probability standardised by the mean and standard deviation of the log-
  probability under the model's own next-token distribution at that position.

Each attack is summarised by ROC AUC and, following Carlini et al., "Membership Inference
Attacks From First Principles", 2022, by the true-positive rate at 1% false-positive rate.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from palimpsest.models import unwrap
from palimpsest.train.batching import IGNORE_INDEX, TokenizedQA, collate_qa, token_losses

ATTACKS = ("loss", "zlib", "min_k")
LOW_FPR = 0.01


@torch.no_grad()
def token_log_probs(model, items: list[TokenizedQA], *, pad_id: int, eos_id: int, batch_size: int = 64,
                    device="cpu") -> list[np.ndarray]:
    """Per item, the teacher-forced log-probabilities (float64) of its answer tokens and closing eos, in order."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in collate_qa(items[start : start + batch_size], pad_id=pad_id,
                                                         eos_id=eos_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses, mask = token_losses(logits, batch["labels"])
        out += [-row[keep].double().cpu().numpy() for row, keep in zip(losses, mask)]
    model.train(was_training)
    return out


@torch.no_grad()
def token_statistics(model, items: list[TokenizedQA], *, pad_id: int, eos_id: int, batch_size: int = 64,
                     device="cpu") -> list[dict[str, np.ndarray]]:
    """Per item, teacher-forced: `log_probs` of the answer tokens and closing eos (as `token_log_probs`), and
    over the answer tokens WITHOUT the closing eos (open-unlearning's `tokenwise_vocab_logprobs` positions):
    `z`, Min-K%++'s standardised log-probability (log p(x_t) − μ_t) / σ_t, with μ_t and σ_t² the mean and
    variance of log p under the model's own distribution at t (σ_t² clamped at 1e-6, as the reference),
    and `hits`, whether the argmax prediction is the true token.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    out: list[dict[str, np.ndarray]] = []
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in collate_qa(items[start : start + batch_size], pad_id=pad_id,
                                                         eos_id=eos_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        for row in range(targets.size(0)):
            positions = (targets[row] != IGNORE_INDEX).nonzero().squeeze(1)
            log_p = torch.log_softmax(logits[row, positions].double(), dim=-1)  # (n, V), t predicts t+1
            truth = targets[row, positions]
            token = log_p.gather(1, truth[:, None]).squeeze(1)
            probs = log_p.exp()
            mean = (probs * log_p).sum(-1)
            variance = ((probs * log_p.square()).sum(-1) - mean.square()).clamp_min(1e-6)
            z = (token - mean) / variance.sqrt()
            hits = log_p.argmax(-1) == truth
            out.append({"log_probs": token.cpu().numpy(), "z": z[:-1].cpu().numpy(),
                        "hits": hits[:-1].cpu().numpy()})
    model.train(was_training)
    return out


def attack_scores(log_probs: list[np.ndarray], texts: list[str], *, k: float = 0.2, z_scores: list | None = None,
                  min_k_without_eos: bool = False) -> dict[str, np.ndarray]:
    """Score every example under each attack in `ATTACKS` (and Min-K%++ given z-scores); higher: "a member".

    Args:
        log_probs: per example, the log-probabilities of its scored tokens (see `token_log_probs`).
        texts: per example, the scored text (the answer string), for the zlib entropy.
        k: fraction of lowest-probability tokens Min-K% (and Min-K%++) averages, in (0, 1].
        z_scores: per example, Min-K%++'s standardised log-probabilities (`token_statistics`'s `z`).
        min_k_without_eos: Min-K% over all but the last scored token (the closing eos), as
            open-unlearning's `tokenwise_logprobs` ("-1 to ignore eos prediction").

    Returns:
        {attack: (N,) float64 scores}.

    Raises:
        ValueError: k out of range, lengths differ, or an example has no tokens.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    if len(log_probs) != len(texts):
        raise ValueError(f"log_probs and texts differ in length: {len(log_probs)} vs {len(texts)}")
    empty = [i for i, lp in enumerate(log_probs) if len(lp) == 0]
    if empty:
        raise ValueError(f"examples with no scored tokens: {empty[:10]}")
    mean_nll = np.array([-np.mean(lp) for lp in log_probs], dtype=np.float64)
    zlib_entropy = np.array([len(zlib.compress(text.encode("utf-8"))) for text in texts], dtype=np.float64)
    # Shi et al.'s code keeps int(len * k) tokens; our answers are a few tokens long, where
    # that is often 0 (an empty mean), so keep at least the single least likely token.
    scored = [lp[:-1] if min_k_without_eos and len(lp) > 1 else lp for lp in log_probs]
    scores = {"loss": -mean_nll, "zlib": -mean_nll / zlib_entropy, "min_k": _lowest_mean(scored, k)}
    if z_scores is not None:
        if len(z_scores) != len(log_probs):
            raise ValueError(f"z_scores and log_probs differ in length: {len(z_scores)} vs {len(log_probs)}")
        scores["min_k_plus_plus"] = _lowest_mean(z_scores, k)
    return scores


def _lowest_mean(rows: list[np.ndarray], k: float) -> np.ndarray:
    """Per row, the mean of its int(len·k) lowest values (at least one; 0 for an empty row, as the reference)."""
    return np.array([np.sort(row)[: max(1, int(len(row) * k))].mean() if len(row) else 0.0 for row in rows],
                    dtype=np.float64)


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr_limit: float = LOW_FPR) -> float:
    """Largest TPR among the ROC's thresholds whose FPR <= `fpr_limit` (the step function, no interpolation).

    Every point counted is a threshold the attacker can actually pick; with fewer than
    1/fpr_limit non-members this means no false positive at all.
    """
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(tpr[fpr <= fpr_limit].max())  # fpr[0] == 0, so never empty


def membership_inference(member_log_probs: list[np.ndarray], member_texts: list[str],
                         non_member_log_probs: list[np.ndarray], non_member_texts: list[str], *, k: float = 0.2,
                         return_scores: bool = False, member_z: list | None = None, non_member_z: list | None = None,
                         min_k_without_eos: bool = False):
    """AUC and TPR at 1% FPR of each attack, separating members (label 1) from non-members (label 0).

    Returns:
        {"attacks": {attack: {"auc", "tpr_at_1pct_fpr"}}, "members": n, "non_members": n, "k": k},
        floats rounded to 4 decimals. With `return_scores=True`, the pair (that dict, scores)
        where scores = {"members": {attack: (n,) array}, "non_members": {attack: (n,) array}},
        the input `plot_mia` takes.

    Raises:
        ValueError: either side is empty, or as `attack_scores`.
    """
    if not member_log_probs or not non_member_log_probs:
        raise ValueError(f"membership inference needs members and non-members, got "
                         f"{len(member_log_probs)} and {len(non_member_log_probs)}")
    scores = {"members": attack_scores(member_log_probs, member_texts, k=k, z_scores=member_z,
                                       min_k_without_eos=min_k_without_eos),
              "non_members": attack_scores(non_member_log_probs, non_member_texts, k=k, z_scores=non_member_z,
                                           min_k_without_eos=min_k_without_eos)}
    labels = np.r_[np.ones(len(member_log_probs)), np.zeros(len(non_member_log_probs))]
    attacks = {}
    for name in scores["members"]:
        both = np.r_[scores["members"][name], scores["non_members"][name]]
        attacks[name] = {"auc": round(float(roc_auc_score(labels, both)), 4),
                         "tpr_at_1pct_fpr": round(tpr_at_fpr(labels, both), 4)}
    result = {"attacks": attacks, "members": len(member_log_probs), "non_members": len(non_member_log_probs),
              "k": k}
    return (result, scores) if return_scores else result


def plot_mia(scores: Mapping[str, Mapping[str, np.ndarray]], path: str | Path, *, title: str = "",
             result: dict | None = None) -> Path:
    """One histogram panel per attack, members over non-members on shared bins; AUCs from `result` if given."""
    from palimpsest.report.common import plt_module, save  # matplotlib only when plotting

    plt = plt_module()
    names = list(scores["members"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        members, non_members = np.asarray(scores["members"][name]), np.asarray(scores["non_members"][name])
        bins = np.histogram_bin_edges(np.r_[members, non_members], bins=30)
        ax.hist(non_members, bins=bins, alpha=0.55, label=f"non-members ({len(non_members)})")
        ax.hist(members, bins=bins, alpha=0.55, label=f"members ({len(members)})")
        auc = (result or {}).get("attacks", {}).get(name, {}).get("auc")
        ax.set_title(name if auc is None else f"{name}: AUC {auc:.3f}")
        ax.set_xlabel("score (higher: more likely a member)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("examples")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, Path(path))
