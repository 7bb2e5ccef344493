"""Run every reproduction script with ``DRY_RUN=1`` (a handful of iterations on the embedded data), then the report.

    python scripts/dry_run.py --out /tmp/coring_dry [--jobs 2] [--only resnet_56/e5 ...] [--no-report]

Order: the dry-run baselines (``scripts/train_baseline.sh <arch>``, one per arch, shared by its rows), the
ResNet-50 ranks (``scripts/generate_rank_resnet50.sh``), every row script, and a small ablation
(``scripts/ablation.sh`` on ResNet-56: cosine with K in {1, 2}). One row (``TORCHRUN_ROW``) fine-tunes with
``GPUS=2``, i.e. torchrun with the gloo backend on CPU. Independent scripts run ``--jobs`` at a time, each
single-threaded. Each script's output goes to ``<out>/logs/<name>.txt``; the runs to ``<out>/runs/``; the report
(``main/report.py``) to ``<out>/results/``; each script's time and exit status to ``<out>/timings.json``. ``tests/test_scripts.py`` and ``tests/test_report.py`` use this.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from coring.cli import Parser

REPO = Path(__file__).resolve().parent.parent

from coring.paper_tables import CORING_ROWS  # noqa: E402

__all__ = ["ScriptRun", "DryRun", "run_all", "TORCHRUN_ROW", "ABLATION", "main"]

#: The row whose dry run fine-tunes under torchrun (2 processes, gloo on CPU).
TORCHRUN_ROW = "resnet_56/e"
#: The ablation dry run: its row, criteria and values of K.
#: With the row's own run (Euclide_dis, K=1) this gives a K-shot curve (cosine, K=1 and 2) and a metric pair at K=1.
ABLATION = {"ROW": "resnet_56/e", "CRITERIA": "cosine_sim", "SHOTS": "1 2"}


@dataclass
class ScriptRun:
    """One script's dry run."""

    name: str
    command: list[str]
    job_dir: Path
    log: Path
    returncode: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class DryRun:
    """Every script's dry run under ``out``."""

    out: Path
    baselines: dict[str, ScriptRun]
    ranks: ScriptRun | None
    rows: dict[str, ScriptRun]      # "<arch>/<row>" -> its run
    ablation: ScriptRun | None
    report: subprocess.CompletedProcess | None
    seconds: float

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    @property
    def results_dir(self) -> Path:
        return self.out / "results"


def _env(out: Path, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("GPUS", "NNODES", "PRETRAIN", "JOB_DIR", "DATA_DIR", "RANK_DIR", "CRITERION", "SHOT",
                "COMPRESS_RATE", "FORCE_PRUNE", "DRY_RUN_BASELINE", "ROW", "CRITERIA", "SHOTS"):
        env.pop(key, None)
    env.update(DRY_RUN="1", PYTHON=sys.executable, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _run(item: ScriptRun, env: dict[str, str]) -> ScriptRun:
    item.log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(item.log, "w") as log:
        proc = subprocess.run(item.command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    item.returncode, item.seconds = proc.returncode, time.perf_counter() - start
    return item


def _parallel(items: list[tuple[ScriptRun, dict[str, str]]], jobs: int) -> None:
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(lambda pair: _run(*pair), items))


def run_all(out: str | os.PathLike, *, jobs: int = 2, only: list[str] | None = None, report: bool = True,
            ablation: bool = True) -> DryRun:
    """Dry-run the baselines, the ResNet-50 ranks, the rows (``only``: a subset of "<arch>/<row>") and the report."""
    start = time.perf_counter()
    out = Path(out).resolve()
    runs, logs = out / "runs", out / "logs"
    rows = [row for row in CORING_ROWS if only is None or f"{row.arch}/{row.script}" in only]
    archs = sorted({row.arch for row in rows} | ({ABLATION["ROW"].split("/")[0]} if ablation else set()))
    base_dir = {arch: runs / "baseline" / arch for arch in archs}
    rank_dir = runs / "ranks" / "resnet_50"

    baselines = {arch: ScriptRun(f"baseline_{arch}", ["bash", "scripts/train_baseline.sh", arch], base_dir[arch],
                                 logs / f"baseline_{arch}.txt") for arch in archs}
    _parallel([(item, _env(out, {"JOB_DIR": str(item.job_dir)})) for item in baselines.values()], jobs)

    def pretrain(arch: str) -> dict[str, str]:
        return {"PRETRAIN": str(base_dir[arch] / "checkpoint.pth.tar")}

    ranks = None
    if "resnet_50" in archs and baselines["resnet_50"].ok:
        ranks = ScriptRun("generate_rank_resnet50", ["bash", "scripts/generate_rank_resnet50.sh"], rank_dir,
                          logs / "generate_rank_resnet50.txt")
        _run(ranks, _env(out, {**pretrain("resnet_50"), "RANK_DIR": str(rank_dir),
                               "JOB_DIR": str(runs / "generate_rank")}))

    row_runs: dict[str, ScriptRun] = {}
    pending = []
    for row in rows:
        name = f"{row.arch}/{row.script}"
        item = ScriptRun(name, ["bash", f"scripts/{name}.sh"], runs / row.arch / row.script,
                         logs / f"{row.arch}_{row.script}.txt")
        row_runs[name] = item
        if not baselines[row.arch].ok:
            item.returncode = -1
            continue
        extra = {**pretrain(row.arch), "JOB_DIR": str(item.job_dir)}
        if row.arch == "resnet_50":
            extra["RANK_DIR"] = str(rank_dir)
        if name == TORCHRUN_ROW:
            extra["GPUS"] = "2"
        pending.append((item, _env(out, extra)))
    ablation_run = None
    if ablation:
        arch = ABLATION["ROW"].split("/")[0]
        ablation_run = ScriptRun("ablation", ["bash", "scripts/ablation.sh"], runs / "ablation",
                                 logs / "ablation.txt")
        pending.append((ablation_run, _env(out, {**pretrain(arch), **ABLATION, "JOB_DIR": str(runs / "ablation")})))
    # The slowest first, so that the pool's tail is short.
    weight = {"vgg_16_bn": 0, "resnet_50": 1, "googlenet": 2, "densenet_40": 3}
    pending.sort(key=lambda pair: weight.get(pair[0].name.split("/")[0], 9))
    _parallel(pending, jobs)

    timings = {item.name: {"seconds": round(item.seconds, 1), "returncode": item.returncode}
               for item in [*baselines.values(), *([ranks] if ranks else []), *row_runs.values(),
                            *([ablation_run] if ablation_run else [])]}
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    report_proc = None
    if report:
        report_proc = subprocess.run([sys.executable, "main/report.py", "--job_dir", str(runs), "--out",
                                      str(out / "results")], cwd=REPO, env=_env(out, {}), capture_output=True,
                                     text=True)
    return DryRun(out, baselines, ranks, row_runs, ablation_run, report_proc, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--jobs", type=int, default=2, help="scripts run at a time (each single-threaded)")
    parser.add_argument("--only", nargs="*", default=None, help="rows to run, as <arch>/<row>")
    parser.add_argument("--no-report", dest="report", action="store_false", help="do not run main/report.py")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false", help="skip the ablation dry run")
    args = parser.parse_args(argv)
    result = run_all(args.out, jobs=args.jobs, only=args.only, report=args.report, ablation=args.ablation)
    items = [*result.baselines.values(), *([result.ranks] if result.ranks else []), *result.rows.values(),
             *([result.ablation] if result.ablation else [])]
    failed = [item for item in items if not item.ok]
    for item in items:
        print(f"{'ok ' if item.ok else 'FAIL'} {item.seconds:6.1f}s  {item.name}  ({item.log})")
    if result.report is not None:
        print(result.report.stdout.strip() or result.report.stderr.strip())
    print(f"total {result.seconds:.0f}s")
    return 1 if failed or (result.report is not None and result.report.returncode) else 0


if __name__ == "__main__":
    raise SystemExit(main())
