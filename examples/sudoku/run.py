"""The Sudoku study of Learned Relay Representations, end to end on a CPU.

    python examples/sudoku/run.py                      # default preset: <= 30 min on 2 cores
    python examples/sudoku/run.py --preset quick       # a first look in a few minutes
    python examples/sudoku/run.py --seeds 0,1,2        # three training seeds: means, std ribbons, intervals
    python examples/sudoku/run.py --set update=all empty=zero   # any preset field, see --help
    python examples/sudoku/run.py --preset gpu --device cuda
    python examples/sudoku/run.py --eval-file sudoku-extreme-test.csv   # question/answer or quizzes/solutions

Generates puzzles, trains MLM, Rollout, Relay (sg) and Relay under one compute budget, decodes the evaluation
puzzles (and the validation puzzles, and the hard subset) over a sweep of confidence thresholds (and the relay
models again with h zeroed), then writes ``results.json``, ``comparisons.json`` and ``pareto.png`` into ``--out``
and prints the tables. Interrupt it at any time: running it again with the same arguments continues from the last
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `sudoku` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from sudoku import store  # noqa: E402
from sudoku.presets import DESCRIPTIONS, HELP, METHODS, PRESETS, Preset  # noqa: E402

ABLATIONS = {"relay_sg": "relay_sg_h0", "relay": "relay_h0"}
#: preset fields that only change the evaluation: changing them reuses the trained checkpoints
EVAL_ONLY = ("eval_puzzles", "thresholds", "eval_batch", "val_puzzles", "hard_puzzles", "hard_givens")
#: evaluation puzzles are the same for every training seed (the seed changes training data and initialisation)
DATA_SEEDS = {"eval": 10_000, "val": 20_000, "hard": 30_000}
OPTIONAL = ("numpy", "matplotlib", "tqdm")


def settings_help() -> str:
    """The --help epilog: every preset, then every --set key with its value in each preset."""
    lines = ["presets:"] + [f"  {name:<8} {DESCRIPTIONS.get(name, '')}" for name in PRESETS]
    flat = {name: _flat(p) for name, p in PRESETS.items()}
    lines += ["", f"--set keys (values: {' / '.join(PRESETS)}):"]
    for key in flat["default"]:
        values = " / ".join(_show(flat[name][key]) for name in PRESETS)
        lines.append(f"  {key:<16} {values:<28} {HELP.get(key, '')}")
    return "\n".join(lines)


def _flat(preset: Preset) -> dict[str, object]:
    d = {k: v for k, v in preset.to_dict().items() if k not in ("name", "model")}
    return {**d, **preset.model.to_dict()}


def _show(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=settings_help(),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="see the list below")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: ./sudoku-results/<preset>)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0, help="training seed of a one-seed run (written into --out)")
    p.add_argument(
        "--seeds",
        default=None,
        help="several training seeds, e.g. 0,1,2: one run per seed in --out/seed<N>, then seed means and std in --out",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"methods to train and evaluate (default all: "
        f"{','.join(METHODS)}); mlm is needed first by the others (its warm start)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--eval-file", type=Path, default=None, help="Sudoku-Extreme or Kaggle CSV to evaluate on")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override preset fields (see below)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def check_dependencies() -> None:
    """Fail before training, not after it, when an optional dependency of the study is missing."""
    import importlib.util

    missing = [name for name in OPTIONAL if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"the Sudoku study needs {', '.join(missing)} (not installed): pip install 'relaykit[examples]' "
            f"(or pip install {' '.join(missing)})"
        )


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
        defaults = Preset(name=preset.name).to_dict()  # a folder trained before a setting existed had its default
        for key, value in defaults.items():
            if key not in EVAL_ONLY:
                old["preset"].setdefault(key, value)
        for key, value in defaults["model"].items():
            old["preset"]["model"].setdefault(key, value)
        if old != json.loads(json.dumps(config)):
            raise SystemExit(
                f"{out} holds a run with other settings ({path}); pass a new --out, or delete the folder to restart"
            )
    else:
        store.write_json(path, config)


def puzzle_sets(
    preset: Preset, data_dir: Path, eval_file: Path | None, progress: bool
) -> dict[str, tuple[object, dict[str, object]]]:
    """The decoded sets, each with its reported subsets: ``eval`` (all / deducible / search), ``val``, ``hard``."""
    from sudoku import data as sdata

    if eval_file is not None:
        evalset = sdata.load_csv(eval_file, limit=preset.eval_puzzles)
    else:
        evalset = sdata.cached(
            data_dir / "eval.npz", preset.eval_puzzles, givens=preset.givens, seed=DATA_SEEDS["eval"], progress=progress
        )
    sets: dict[str, tuple[object, dict[str, object]]] = {"eval": (evalset, evalset.subset_masks())}
    if preset.val_puzzles > 0:
        val = sdata.cached(
            data_dir / "val.npz", preset.val_puzzles, givens=preset.givens, seed=DATA_SEEDS["val"], progress=progress
        )
        sets["val"] = (val, {"val": val.subset_masks()["all"]})
    if preset.hard_puzzles > 0:
        hard = sdata.cached(
            data_dir / "hard.npz",
            preset.hard_puzzles,
            givens=preset.hard_givens,
            seed=DATA_SEEDS["hard"],
            progress=progress,
        )
        sets["hard"] = (hard, {"hard": hard.subset_masks()["all"]})
    return sets


def run_seed(
    preset: Preset, out: Path, seed: int, sets: dict, *, methods: list[str], source: str, args: argparse.Namespace
) -> tuple[list[dict[str, object]], dict[tuple[str, str], dict], dict[str, object]]:
    """Train and evaluate every method for one training seed in ``out``: rows, per-puzzle outcomes, summary."""
    import numpy as np

    from sudoku import data as sdata
    from sudoku.evaluate import cache_key, evaluate
    from sudoku.train import load_trained, train

    device = torch.device(args.device)
    progress = not args.no_progress
    check_config(out, preset, seed)
    pool = sdata.cached(
        out / "data" / "train.npz", preset.train_puzzles, givens=preset.givens, seed=seed, progress=progress
    )
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    outcomes: dict[tuple[str, str], dict] = {}
    summary: dict[str, object] = {"seed": seed}
    for method in methods:
        path = train(method, preset, pool, ckpt_dir, device=device, seed=seed, progress=progress)
        relay, record = load_trained(path, preset, device)
        log = record["log"]
        kstep = [entry[2] for entry in log if entry[0] > preset.warm] if method != "mlm" else []
        summary[method] = {
            "passes": record["passes"],
            "train_seconds": round(record["wall"], 1),
            "train_cells_per_forward": round(sum(kstep) / len(kstep), 2) if kstep else None,
        }
        variants = [(method, False)] + ([(ABLATIONS[method], True)] if method in ABLATIONS else [])
        for name, zero_h in variants:
            for set_name, (puzzles, subsets) in sets.items():
                if zero_h and set_name != "eval":  # the h-zeroed ablation is read on the evaluation puzzles only
                    continue
                where = source if set_name == "eval" else "generated"
                key = cache_key(puzzles, preset.thresholds, source=f"{set_name}-{where}")  # keyed by content
                eval_dir = out / "eval" / key
                eval_dir.mkdir(parents=True, exist_ok=True)
                cache, per = eval_dir / f"{name}.json", eval_dir / f"{name}.npz"
                found = store.read_cache(cache, what=f"cached evaluation of {name}") if per.exists() else None
                if found is not None:
                    with np.load(per) as f:
                        outcome = {"solved": f["solved"], "nfe": f["nfe"]}
                else:
                    found, outcome = evaluate(
                        relay,
                        puzzles,
                        preset.thresholds,
                        method=name,
                        batch=preset.eval_batch,
                        device=device,
                        zero_h=zero_h,
                        progress=progress,
                        subsets=subsets,
                    )
                    np.savez(per.with_suffix(".tmp.npz"), **outcome)
                    per.with_suffix(".tmp.npz").replace(per)
                    store.write_json(cache, found, indent=None)
                rows.extend(found)
                outcomes[(name, set_name)] = outcome
    return rows, outcomes, summary


def comparisons(
    outcomes: list[dict[tuple[str, str], dict]], thresholds: tuple[float, ...], set_names: list[str]
) -> list[dict[str, object]]:
    """Every method against MLM and Rollout at matched NFE / accuracy, per puzzle set (see compare.py)."""
    from sudoku.compare import compare

    rows = []
    names = list(dict.fromkeys(name for name, _ in outcomes[0]))
    for set_name in set_names:
        for ref in ("mlm", "rollout"):
            if (ref, set_name) not in outcomes[0]:
                continue
            for name in names:
                if name == ref or (name, set_name) not in outcomes[0]:
                    continue
                found = compare(
                    [o[(name, set_name)] for o in outcomes], [o[(ref, set_name)] for o in outcomes], thresholds
                )
                rows += [{"method": name, "ref": ref, "set": set_name, **r} for r in found]
    return rows


def comparison_table(rows: list[dict[str, object]], set_name: str = "eval") -> str:
    from sudoku.compare import fmt

    head = f"{'method':<12} {'vs':<8} {'at tau':>6}  {'acc gap at equal NFE (pts)':<28} {'NFE ratio at equal acc':<24} "
    head += "acc gap at 0.6x NFE"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["set"] != set_name:
            continue
        lines.append(
            f"{r['method']:<12} {r['ref']:<8} {r['ref_threshold']:>6g}  {fmt(r['gap'], r['gap_lo'], r['gap_hi']):<28} "
            f"{fmt(r['ratio'], r['ratio_lo'], r['ratio_hi'], scale=1.0, digits=2, sign=False):<24} "
            f"{fmt(r['gap_06'], r['gap_06_lo'], r['gap_06_hi'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_dependencies()
    from sudoku.report import aggregate, pareto, table, write_json

    preset = PRESETS[args.preset].with_overrides(args.set)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SystemExit(f"--methods: expected a comma list of {', '.join(METHODS)}, got {args.methods!r}")
    seeds = [int(v) for v in args.seeds.split(",") if v] if args.seeds else [args.seed]
    root = args.out or Path("sudoku-results") / preset.name
    torch.set_num_threads(max(1, args.threads))
    progress = not args.no_progress
    started = time.perf_counter()
    sets = puzzle_sets(preset, root / "data", args.eval_file, progress)
    source = args.eval_file.stem if args.eval_file is not None else "generated"
    evalset = sets["eval"][0]
    print(
        f"data: {preset.train_puzzles} training puzzles per seed (x random symmetries), {len(evalset)} evaluation "
        f"puzzles ({evalset.source}; {int(evalset.deducible.sum())} deducible by singles, "
        f"{int((~evalset.deducible).sum())} need search)"
        + "".join(
            f", {len(p)} {name} puzzles ({int((~p.deducible).sum())} need search)"
            for name, (p, _) in sets.items()
            if name != "eval"
        )
    )
    per_seed_rows, per_seed_outcomes, summaries = [], [], []
    for seed in seeds:
        out = root / f"seed{seed}" if args.seeds else root
        rows, outcomes, summary = run_seed(preset, out, seed, sets, methods=methods, source=source, args=args)
        per_seed_rows.append(rows)
        per_seed_outcomes.append(outcomes)
        summaries.append(summary)
    rows = aggregate(per_seed_rows, seeds) if args.seeds else per_seed_rows[0]
    if not args.seeds:
        for row in rows:
            row.pop("seeds", None)
    compared = comparisons(per_seed_outcomes, preset.thresholds, list(sets))
    root.mkdir(parents=True, exist_ok=True)
    write_json(rows, root / "results.json")
    clean = [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in compared
    ]
    (root / "comparisons.json").write_text(json.dumps(clean, indent=1, allow_nan=False))
    label = f"{len(seeds)} seeds, " if len(seeds) > 1 else ""
    pareto(rows, root / "pareto.png", title=f"Sudoku ({preset.name} preset, {label}{evalset.source} puzzles)")
    seconds = round(time.perf_counter() - started, 1)
    store.write_json(root / "summary.json", {"seeds": summaries, "seconds": seconds})
    print()
    print(table(rows, subsets=("all",)))
    print()
    print(table([r for r in rows if r["subset"] != "all"]))
    print()
    print(comparison_table(compared))
    cells = {m: [s[m]["train_cells_per_forward"] for s in summaries if m in s] for m in methods if m != "mlm"}
    print(
        "\ntraining: blanks committed per forward (K-step phase, mean over seeds): "
        + ", ".join(f"{m} {sum(v) / len(v):.2f}" for m, v in cells.items() if v and None not in v)
    )
    print(
        f"\nwrote {root / 'results.json'}, comparisons.json and pareto.png; training passes per method: "
        f"{preset.budget}; {seconds:.0f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
