"""Where does the relay term act, and how large is it? A diagnostic for one trained relay model.

    python examples/sudoku/diagnose.py runs/q0 --method relay --threshold 0.85

Decodes the validation puzzles of a run folder with the model's own threshold policy and relay on, and at every
step reports, per kind of cell (``given``, ``committed`` = filled by decoding, ``masked`` = still blank), the mean
norm of the relay term |R(h)| next to the mean norm of the token + position embedding it is added to, and how much
h moved since the previous step (|h_t - h_{t-1}| / |h_t|). Under ``update="all"`` h is rewritten at givens and
committed cells every step: this shows whether the channel's feedback through them is large (a scale problem) or
small (the model learned to ignore it). Prints one line per step (first ``--steps``) and the means over steps.

Legend: b puzzles, n = 81 cells, d width.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from relaykit.policies import Threshold, commit_step  # noqa: E402
from sudoku.data import PuzzleSet  # noqa: E402
from sudoku.model import MASK  # noqa: E402
from sudoku.presets import PRESETS  # noqa: E402
from sudoku.train import load_trained  # noqa: E402

KINDS = ("given", "committed", "masked")


@torch.no_grad()
def trace(relay, puzzles: torch.Tensor, threshold: float) -> list[dict[str, float]]:  # noqa: ANN001
    """Per decoding step: mean |R(h)|, |embedding| and relative h change for each kind of cell."""
    model = relay.backbone
    z, state, prev, steps = puzzles.clone(), None, None, []
    emb = model.tok(z) + (model.row(model.cell_row) + model.col(model.cell_col) + model.box(model.cell_box))
    while bool((z == MASK).any()):
        kinds = {"given": puzzles != MASK, "committed": (puzzles == MASK) & (z != MASK), "masked": z == MASK}
        rec: dict[str, float] = {}
        if state is not None:
            hidden, filled = state.hidden[:, :81], state.filled[:, :81]  # (b, n, d), (b, n)
            if relay.empty == "zero":
                hidden = torch.where(filled.unsqueeze(-1), hidden, torch.zeros_like(hidden))
                filled = torch.ones_like(filled)
            delta = relay.channel(hidden).norm(dim=-1) * filled  # (b, n): the term the hook adds
            moved = None if prev is None else (hidden - prev).norm(dim=-1) / hidden.norm(dim=-1).clamp_min(1e-6)
            for kind, where in kinds.items():
                if bool(where.any()):
                    rec[f"r_{kind}"] = float(delta[where].mean())
                    rec[f"emb_{kind}"] = float(emb.norm(dim=-1)[where].mean())
                    if moved is not None:
                        rec[f"moved_{kind}"] = float(moved[where].mean())
            prev = hidden
        out = relay(z, state=state)
        state = out.state
        commit, prediction = commit_step(Threshold(threshold), out.logits, z, mask_token_id=MASK)
        z = torch.where(commit, prediction, z)
        emb = model.tok(z) + (model.row(model.cell_row) + model.col(model.cell_col) + model.box(model.cell_box))
        steps.append(rec)
    return steps


def main(argv: list[str] | None = None) -> int:
    import json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a one-seed run folder (or one seed<N> folder of a multi-seed run)")
    p.add_argument("--method", default="relay")
    p.add_argument("--threshold", type=float, default=0.85)
    p.add_argument("--puzzles", type=int, default=100)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args(argv)
    config = json.loads((args.folder / "config.json").read_text())
    preset = PRESETS[config["preset"]["name"]].with_overrides(
        [
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in config["preset"].items()
            if k not in ("name", "model")
        ]
        + [f"{k}={v}" for k, v in config["preset"]["model"].items()]
    )
    relay, _ = load_trained(args.folder / "checkpoints" / f"{args.method}.pt", preset, torch.device("cpu"))
    root = args.folder if (args.folder / "data" / "val.npz").exists() else args.folder.parent
    val = PuzzleSet.load(root / "data" / "val.npz").take(args.puzzles)
    steps = trace(relay, torch.from_numpy(val.puzzles), args.threshold)
    keys = [f"{m}_{k}" for k in KINDS for m in ("r", "emb", "moved")]
    print(
        f"{args.folder} {args.method} (update={relay.update}, empty={relay.empty}) at {args.threshold}: "
        f"{len(steps)} steps for {len(val)} puzzles"
    )
    print("step " + " ".join(f"{k:>15}" for k in keys))
    for i, rec in enumerate(steps[: args.steps]):
        print(f"{i:>4} " + " ".join(f"{rec[k]:>15.3f}" if k in rec else f"{'-':>15}" for k in keys))
    means = {k: [r[k] for r in steps if k in r] for k in keys}
    print("mean " + " ".join(f"{sum(v) / len(v):>15.3f}" if v else f"{'-':>15}" for v in means.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
