"""The Sudoku study of Learned Relay Representations, end to end on a CPU.

    python examples/sudoku/run.py                      # default preset: <= 30 min on 2 cores
    python examples/sudoku/run.py --preset quick       # a first look in a few minutes
    python examples/sudoku/run.py --preset gpu --device cuda
    python examples/sudoku/run.py --eval-file sudoku-extreme-test.csv   # question/answer or quizzes/solutions

Generates puzzles, trains MLM, Rollout, Relay (sg) and Relay under one compute budget, decodes the evaluation
puzzles over a sweep of confidence thresholds (and the relay models again with h zeroed), then writes
``results.json`` and ``pareto.png`` into ``--out`` and prints the table. Interrupt it at any time: running it
again with the same arguments continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `sudoku` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from sudoku import data as sdata  # noqa: E402
from sudoku import store  # noqa: E402
from sudoku.evaluate import cache_key, evaluate  # noqa: E402
from sudoku.presets import METHODS, PRESETS, Preset  # noqa: E402
from sudoku.report import pareto, table, write_json  # noqa: E402
from sudoku.train import load_trained, train  # noqa: E402

ABLATIONS = {"relay_sg": "relay_sg_h0", "relay": "relay_h0"}
#: preset fields that only change the evaluation: changing them reuses the trained checkpoints
EVAL_ONLY = ("eval_puzzles", "thresholds", "eval_batch")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: ./sudoku-results/<preset>)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--eval-file", type=Path, default=None, help="Sudoku-Extreme or Kaggle CSV to evaluate on")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override preset fields")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def check_config(out: Path, preset: Preset, seed: int) -> None:
    """Refuse to resume a folder trained with other settings (its checkpoints would not match)."""
    training = {k: v for k, v in preset.to_dict().items() if k not in EVAL_ONLY}
    config = {"preset": training, "seed": seed}
    store.check_run_folder(out)
    path = out / "config.json"
    if path.exists():
        try:
            old = store.read_json(path, what="the settings this folder was trained with")
        except ValueError as e:
            raise SystemExit(str(e)) from e
        if old != json.loads(json.dumps(config)):
            raise SystemExit(
                f"{out} holds a run with other settings ({path}); pass a new --out, or delete the folder to restart"
            )
    else:
        store.write_json(path, config)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.preset].with_overrides(args.set)
    out = args.out or Path("sudoku-results") / preset.name
    device = torch.device(args.device)
    torch.set_num_threads(max(1, args.threads))
    progress = not args.no_progress
    check_config(out, preset, args.seed)
    started = time.perf_counter()

    t0 = time.perf_counter()
    pool = sdata.cached(
        out / "data" / "train.npz", preset.train_puzzles, givens=preset.givens, seed=args.seed, progress=progress
    )
    if args.eval_file is not None:
        evalset = sdata.load_csv(args.eval_file, limit=preset.eval_puzzles)
        source = args.eval_file.stem
    else:
        evalset = sdata.cached(
            out / "data" / "eval.npz",
            preset.eval_puzzles,
            givens=preset.givens,
            seed=args.seed + 10_000,
            progress=progress,
        )
        source = "generated"
    gen_s = time.perf_counter() - t0
    eval_dir = out / "eval" / cache_key(evalset, preset.thresholds, source=source)  # cached rows per setting
    print(
        f"data: {len(pool)} training puzzles (x random symmetries), {len(evalset)} evaluation puzzles "
        f"({evalset.source}; {int(evalset.deducible.sum())} deducible by singles, "
        f"{int((~evalset.deducible).sum())} need search) in {gen_s:.0f}s"
    )

    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    summary: dict[str, object] = {}
    for method in METHODS:
        path = train(method, preset, pool, ckpt_dir, device=device, seed=args.seed, progress=progress)
        relay, record = load_trained(path, preset, device)
        summary[method] = {"passes": record["passes"], "train_seconds": round(record["wall"], 1)}
        variants = [(method, False)] + ([(ABLATIONS[method], True)] if method in ABLATIONS else [])
        for name, zero_h in variants:
            cache = eval_dir / f"{name}.json"
            found = store.read_cache(cache, what=f"cached evaluation of {name}")
            if found is None:
                found = evaluate(
                    relay,
                    evalset,
                    preset.thresholds,
                    method=name,
                    batch=preset.eval_batch,
                    device=device,
                    zero_h=zero_h,
                    progress=progress,
                )
                store.write_json(cache, found, indent=None)
            rows.extend(found)

    write_json(rows, out / "results.json")
    pareto(rows, out / "pareto.png", title=f"Sudoku ({preset.name} preset, {evalset.source} puzzles)")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    store.write_json(out / "summary.json", summary)
    print()
    print(table(rows, subsets=("all",)))
    print()
    print(table([r for r in rows if r["subset"] != "all"]))
    print(f"\nwrote {out / 'results.json'} and {out / 'pareto.png'}; training passes per method: {preset.budget}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
