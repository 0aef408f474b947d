"""Run several recipes of the Sudoku study, each with several seeds, as parallel processes on one machine.

    python examples/sudoku/fanout.py --seeds 0,1,2 --jobs 12 --device cuda --out runs/study \\
        --recipe baseline --recipe "alg1: update=all empty=zero relay_lr=1e-4" --recipe "tied: tied=true"

Every recipe is ``name: key=value ...`` (``run.py --set`` keys) on top of ``--preset``; the first recipe is the
baseline. Each (recipe, seed, method) is one ``run.py`` process writing into ``--out/<recipe>/seed<N>``, so one
GPU serves many small models at once. Work is shared where the recipe allows it, by copying checkpoints and cached
evaluations from the baseline's folder of the same seed:

* a recipe that changes only the relay phase (``update``, ``empty``, ``relay_lr``, ``relay_schedule``, ``channel``)
  reuses the baseline's MLM and Rollout and trains Relay (sg) and Relay;
* one that changes the K-step training (``train_threshold``, ``train_fraction``, ``k``) reuses the MLM;
* any other key (``tied``, ``width``, ``budget``, ...) trains everything.

When every seed of a recipe is done, ``run.py --seeds ...`` assembles its ``results.json``, ``comparisons.json``,
``pareto.png`` and ``report.txt``. ``--deadline`` stops training jobs after that many seconds and still assembles
every recipe with at least one finished seed (over the seeds that finished), so a run on a borrowed machine always
returns what it measured. The puzzles are generated once, before any job starts, in one process per CPU, into
``--out/_data`` (or read from ``--data``: ``data/{eval,val,hard}.npz`` and ``train<seed>.npz``), and copied into
every run folder, so no job spends its time generating them and every recipe sees the same puzzles.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RUN = Path(__file__).resolve().parent / "run.py"
if __package__ in (None, ""):  # run as a script: make the `sudoku` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
METHODS = ("mlm", "rollout", "relay_sg", "relay")
RELAY_PHASE = {"update", "empty", "relay_lr", "relay_schedule", "channel"}
KSTEP_PHASE = RELAY_PHASE | {"train_threshold", "train_fraction", "k"}
#: settings that change the puzzles: shared by every recipe, so they belong in --set, not in a recipe
DATA_KEYS = {"givens", "train_puzzles", "eval_puzzles", "val_puzzles", "hard_puzzles", "hard_givens"}


@dataclass
class Recipe:
    name: str
    sets: list[str]

    @property
    def keys(self) -> set[str]:
        return {s.partition("=")[0] for s in self.sets}

    def reuses(self) -> tuple[str, ...]:
        """Methods whose checkpoints come from the baseline of the same seed."""
        if self.keys <= RELAY_PHASE:
            return ("mlm", "rollout")
        if self.keys <= KSTEP_PHASE:
            return ("mlm",)
        return ()


@dataclass
class Job:
    name: str
    argv: list[str]
    log: Path
    after: list[str] = field(default_factory=list)
    before_start: list[tuple[str, str, int]] = field(default_factory=list)  # (recipe, method, seed) to copy in
    aggregate: bool = False
    proc: subprocess.Popen | None = None
    state: str = "waiting"  # waiting | running | done | failed | skipped


def parse_recipe(text: str) -> Recipe:
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise SystemExit(f"--recipe expects 'name: key=value ...' with a plain name, got {text!r}")
    sets = rest.split() if sep else []
    bad = [s for s in sets if "=" not in s]
    if bad:
        raise SystemExit(f"--recipe {name}: expected key=value settings, got {bad}")
    return Recipe(name, sets)


def copy_method(src: Path, dst: Path, method: str) -> None:
    """Copy one trained method (checkpoint, saved folder, cached evaluations) from one seed folder to another."""
    (dst / "checkpoints").mkdir(parents=True, exist_ok=True)
    names = [f"{method}.pt"] + (["mlm_warm.pt"] if method == "mlm" else [])
    for name in names:
        if not (dst / "checkpoints" / name).exists():  # another job of this seed may be reading it already
            shutil.copy2(src / "checkpoints" / name, dst / "checkpoints" / name)
    if (src / "checkpoints" / method).is_dir() and not (dst / "checkpoints" / method).exists():
        shutil.copytree(src / "checkpoints" / method, dst / "checkpoints" / method, dirs_exist_ok=True)
    for cache in (src / "eval").glob("*"):
        for variant in (method, f"{method}_h0"):
            for suffix in (".json", ".npz"):
                f = cache / f"{variant}{suffix}"
                if f.exists() and not (dst / "eval" / cache.name / f.name).exists():
                    (dst / "eval" / cache.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dst / "eval" / cache.name / f.name)


def prepare(preset_name: str, settings: list[str], seeds: list[int], data: Path) -> None:
    """Generate the evaluation sets and every seed's training pool once, as ``run.py`` would (same seeds)."""
    from sudoku import data as sdata
    from sudoku.presets import PRESETS
    from sudoku.run import puzzle_sets

    preset = PRESETS[preset_name].with_overrides(settings)
    puzzle_sets(preset, data / "data", None, progress=False)
    for seed in seeds:
        sdata.cached(data / f"train{seed}.npz", preset.train_puzzles, givens=preset.givens, seed=seed, progress=False)


def seed_data(data: Path | None, folder: Path, seed: int | None) -> None:
    if data is None:
        return
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for f in (data / "data").glob("*.npz"):
        if not (folder / "data" / f.name).exists():
            shutil.copy2(f, folder / "data" / f.name)
    pool = data / f"train{seed}.npz"
    if seed is not None and pool.exists() and not (folder / "data" / "train.npz").exists():
        shutil.copy2(pool, folder / "data" / "train.npz")


def plan(args: argparse.Namespace, recipes: list[Recipe], seeds: list[int]) -> list[Job]:
    base = recipes[0]
    common = ["--preset", args.preset, "--device", args.device, "--threads", "1", "--no-progress"]
    reuses = {r.name: () if r is base else r.reuses() for r in recipes}  # read from the recipe's own settings
    recipes = [Recipe(r.name, [*args.set, *r.sets]) for r in recipes]
    jobs: list[Job] = []
    for r in recipes:
        reused = reuses[r.name]
        for seed in seeds:
            out = args.out / r.name / f"seed{seed}"
            seed_data(args.data, out, seed)
            sets = ["--set", *r.sets] if r.sets else []
            head = [sys.executable, str(RUN), *common, "--seed", str(seed), "--out", str(out), *sets]
            copies = [(base.name, m, seed) for m in reused if m == "mlm"]
            if "mlm" not in reused:
                jobs.append(Job(f"{r.name}/s{seed}/mlm", [*head, "--methods", "mlm"], out / "mlm.log"))
            mlm_job = f"{base.name}/s{seed}/mlm" if "mlm" in reused else f"{r.name}/s{seed}/mlm"
            for m in METHODS[1:]:
                if m in reused:
                    continue
                jobs.append(
                    Job(f"{r.name}/s{seed}/{m}", [*head, "--methods", f"mlm,{m}"], out / f"{m}.log", [mlm_job], copies)
                )
        done_seed_jobs = [j.name for j in jobs if j.name.startswith(f"{r.name}/")]
        borrowed = [f"{base.name}/s{s}/{m}" for s in seeds for m in reused]
        root = args.out / r.name
        seed_data(args.data, root, None)
        argv = [sys.executable, str(RUN), *common, "--seeds", ",".join(map(str, seeds)), "--out", str(root)]
        argv += ["--set", *r.sets] if r.sets else []
        copies = [(base.name, m, s) for s in seeds for m in reused]
        jobs.append(Job(f"{r.name}/assemble", argv, root / "report.txt", done_seed_jobs + borrowed, copies, True))
    return jobs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="default")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--recipe", action="append", required=True, help="'name: key=value ...' (first: the baseline)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes at once")
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no training job runs")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings of every recipe")
    p.add_argument("--data", type=Path, default=None, help="pre-generated puzzle caches (see above)")
    args = p.parse_args(argv)
    recipes = [parse_recipe(t) for t in args.recipe]
    if len({r.name for r in recipes}) != len(recipes):
        raise SystemExit("--recipe names must differ")
    for r in recipes:
        if r.keys & DATA_KEYS:
            raise SystemExit(f"--recipe {r.name}: {sorted(r.keys & DATA_KEYS)} change the puzzles; pass them in --set")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.data is None:
        args.data = args.out / "_data"
        t0 = time.monotonic()
        prepare(args.preset, args.set, seeds, args.data)
        print(f"puzzles ready in {args.data} after {time.monotonic() - t0:.0f}s", flush=True)
    jobs = plan(args, recipes, seeds)
    by_name = {j.name: j for j in jobs}
    started = time.monotonic()
    late = False

    def launch(job: Job) -> None:
        for recipe, method, seed in job.before_start:
            src, dst = args.out / recipe / f"seed{seed}", job.log.parent / (f"seed{seed}" if job.aggregate else "")
            copy_method(src, dst, method)
        job.log.parent.mkdir(parents=True, exist_ok=True)
        job.proc = subprocess.Popen(job.argv, stdout=job.log.open("w"), stderr=subprocess.STDOUT)
        job.state = "running"
        print(f"[{time.monotonic() - started:6.0f}s] start {job.name}", flush=True)

    while any(j.state in ("waiting", "running") for j in jobs):
        for j in jobs:
            if j.state == "running" and j.proc is not None and j.proc.poll() is not None:
                j.state = "done" if j.proc.returncode == 0 else "failed"
                print(f"[{time.monotonic() - started:6.0f}s] {j.state} {j.name} (exit {j.proc.returncode})", flush=True)
        if args.deadline is not None and not late and time.monotonic() - started > args.deadline:
            late = True
            for j in jobs:
                if j.state == "running" and not j.aggregate:
                    j.proc.terminate()
                    j.proc.wait()
                    j.state = "failed"
                    print(f"[{time.monotonic() - started:6.0f}s] stopped {j.name} at the deadline", flush=True)
        running = sum(j.state == "running" for j in jobs)
        for j in jobs:
            if j.state != "waiting" or running >= args.jobs:
                continue
            deps = [by_name[d] for d in j.after]
            broken = late or any(d.state in ("failed", "skipped") for d in deps)
            if broken and j.aggregate:
                _partial(j, jobs, seeds)
                if j.state == "waiting" and not j.after:
                    launch(j)
                    running += 1
                continue
            if broken:
                j.state = "skipped"
                continue
            if all(d.state == "done" for d in deps):
                launch(j)
                running += 1
        time.sleep(1.0)
    print(f"finished in {time.monotonic() - started:.0f}s")
    for j in jobs:
        print(f"  {j.state:<8} {j.name}")
    return 0 if all(j.state == "done" for j in jobs) else 1


def _partial(job: Job, jobs: list[Job], seeds: list[int]) -> None:
    """After the deadline: assemble a recipe over the seeds whose every job finished, or skip it."""
    recipe = job.name.split("/")[0]
    ok = []
    for s in seeds:
        mine = [j for j in jobs if j.name.startswith(f"{recipe}/s{s}/")]
        borrowed = [d for d in job.after if f"/s{s}/" in d and not d.startswith(f"{recipe}/")]
        states = [j.state for j in mine] + [next(j for j in jobs if j.name == d).state for d in borrowed]
        if states and all(st == "done" for st in states):
            ok.append(s)
        elif any(st in ("waiting", "running") for st in states):
            return  # still settling
    if not ok:
        job.state = "skipped"
        return
    i = job.argv.index("--seeds")
    job.argv[i + 1] = ",".join(map(str, ok))
    job.before_start = [c for c in job.before_start if c[2] in ok]
    job.after = []


if __name__ == "__main__":
    raise SystemExit(main())
