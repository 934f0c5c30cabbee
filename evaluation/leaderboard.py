"""One leaderboard for every method on the same teachers: a table per benchmark, plots, and the README's tables.

    python evaluation/leaderboard.py --bench b3                    # reads committed raw output (seconds)
    python evaluation/leaderboard.py --bench b1 b2 --rescore      # samples every student beside its teacher (CPU: ~30 min)
    python evaluation/leaderboard.py --readme README.md           # writes the tables into README's marked blocks
                                                                  # (and refreshes its <!-- table:PATH --> quotes)

Rows come from evaluation/leaderboard.yaml. B1 and B2 rows are scored in ONE run per benchmark with the teacher row
(evaluation/fmnist/compare.py, evaluation/video/compare.py; raw output in <out>/raw/), so every speed ratio is measured
against a teacher timed in the same run; without --rescore the last raw output is read back. B3 rows are the
committed equal-budget toy experiments (several seeds; the command that made each is in the yaml). Every row: the
benchmark's quality metrics, NFE, speed ratio (B1/B2), training steps and CPU time counting earlier stages.
Writes <out>/<bench>.md and .json, and <out>/<bench>_quality.png: quality against steps per method and against
training time. README blocks between `<!-- leaderboard:<bench> -->` and `<!-- /leaderboard:<bench> -->` are
replaced by <bench>.md, and blocks between `<!-- table:PATH -->` and `<!-- /table -->` by the first table of the
committed raw output PATH (single-benchmark runs: the teacher's step sweep, a method's own table); tests/
test_leaderboard.py checks that README and the committed tables agree.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHES = ("b1", "b2", "b3")
# per benchmark: (column key, header, format, the quality key plotted, lower is better)
COLUMNS = {
    "b1": [("fid_fmnist", "FID-FMNIST", ".2f"), ("class_accuracy", "class accuracy", ".3f"),
           ("diversity", "diversity", ".2f")],
    "b2": [("fid_frames", "per-frame FID", ".2f"), ("fd_motion", "FD motion", ".2f"),
           ("class_accuracy", "class accuracy", ".3f")],
    "b3": [("sliced_w2", "sliced W2", ".3f"), ("modes_covered", "modes covered", ".3f"),
           ("on_mode", "on-mode", ".3f"), ("mode_weight_error", "mode-weight TV", ".3f")],
}
QUALITY = {"b1": "fid_fmnist", "b2": "fid_frames", "b3": "sliced_w2"}     # the plotted metric (lower is better)


def rescore(bench: str, cfg: dict[str, Any], raw: Path) -> None:
    """Run the benchmark's compare script on every listed student beside the teacher (one run)."""
    script = {"b1": "evaluation/fmnist/compare.py", "b2": "evaluation/video/compare.py"}[bench]
    cmd = [sys.executable, script, "--teacher", cfg["teacher"], "--teacher-steps", str(cfg["teacher_steps"]),
           "--n", str(cfg["n"]), "--name", bench, "--out", str(raw)]
    for name, (_, path, steps, *ffe) in cfg["students"].items():
        spec = f"{name}={path}" + (f"@{steps}" if steps else "") + (f"+{ffe[0]}" if ffe and ffe[0] is not None else "")
        cmd += ["--student", spec]
    subprocess.run(cmd, check=True, cwd=ROOT)


def scored_rows(bench: str, cfg: dict[str, Any], raw: Path) -> list[dict[str, Any]]:
    """B1/B2 rows from the raw output of the last rescoring run."""
    path = raw / f"{bench}.json"
    if not path.is_file():
        raise SystemExit(f"no raw output at {path}: run `python evaluation/leaderboard.py --bench {bench} --rescore`")
    result = json.loads(path.read_text())
    methods = {name: spec[0] for name, spec in cfg["students"].items()}
    rows = []
    for r in result["rows"]:
        teacher = r["name"].startswith("teacher")
        if not teacher and r["name"] not in methods:
            continue                      # a student no longer listed
        speed = r.get("speed_ratio_vs_teacher")
        rows.append({"method": "teacher" if teacher else methods[r["name"]], "name": r["name"],
                     "steps": r["steps"], "first_chunk_steps": r.get("first_chunk_steps"), "nfe": r["nfe"],
                     **{k: r[k] for k, _, _ in COLUMNS[bench]}, "speed_ratio": speed,
                     "train_steps": r.get("trained_steps"), "train_seconds": r.get("train_seconds")})
    return rows


def toy_rows(tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for table in tables:
        result = json.loads((ROOT / table["results"]).read_text())
        by_name = {r["row"]: r for r in result["rows"]}
        for name, (method, steps, train_steps) in table["rows"].items():
            if name not in by_name:
                raise SystemExit(f"{table['results']} has no row {name!r}; rows: {list(by_name)}")
            r = by_name[name]
            rows.append({"table": table["title"], "method": method, "name": name, "steps": steps, "nfe": steps,
                         **{k: r.get(k) for k, _, _ in COLUMNS["b3"]}, "seeds": len(r["seeds"]),
                         "train_steps": train_steps, "train_seconds": r.get("train_seconds")})
    return rows


def markdown(bench: str, rows: list[dict[str, Any]], cfg: Any) -> str:
    cols = COLUMNS[bench]
    lines: list[str] = []
    tables = [t["title"] for t in cfg] if bench == "b3" else [cfg["title"]]
    for title in tables:
        lines += [f"**{title}**", "",
                  "| method | row | steps | NFE | " + " | ".join(h for _, h, _ in cols)
                  + (" | speed ratio" if bench != "b3" else " | seeds") + " | train steps | train time |",
                  "|---|---|---:|---:|" + "---:|" * len(cols) + "---:|---:|---:|"]
        for r in rows:
            if bench == "b3" and r["table"] != title:
                continue
            steps = str(r["steps"]) + (f" (first chunk {r['first_chunk_steps']})"
                                       if r.get("first_chunk_steps") not in (None, r["steps"]) else "")
            extra = (f"{r['speed_ratio']:.1f}x" if r.get("speed_ratio") else "-") if bench != "b3" else str(r["seeds"])
            seconds = f"{r['train_seconds']:.0f} s" if r.get("train_seconds") else "-"
            lines.append(f"| {r['method']} | {r['name']} | {steps} | {r['nfe']} | "
                         + " | ".join(format(r[k], f) if r.get(k) is not None else "-" for k, _, f in cols)
                         + f" | {extra} | {r.get('train_steps') or '-'} | {seconds} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot(bench: str, rows: list[dict[str, Any]], path: Path) -> None:
    """Quality against steps, one line per method, and against training time (students only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = QUALITY[bench]
    header = next(h for k, h, _ in COLUMNS[bench] if k == key)
    fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("table", ""), r["method"]), []).append(r)
    for (table, method), members in groups.items():
        label = method if bench != "b3" else f"{method} ({'weighted' if 'unequal' in table else 'uniform'} ring)"
        members = sorted(members, key=lambda r: r["steps"])
        if method == "teacher":
            for r in members:
                by_steps.axhline(r[key], color="grey", ls="--", lw=1, label=f"{label} at {r['steps']} steps")
            continue
        by_steps.plot([r["steps"] for r in members], [r[key] for r in members], "o-", label=label)
        timed = [r for r in members if r.get("train_seconds")]
        by_time.plot([r["train_seconds"] for r in timed], [r[key] for r in timed], "o", label=label)
    by_steps.set_xscale("log", base=2), by_steps.set_xlabel("sampling steps"), by_steps.set_ylabel(header)
    by_time.set_xscale("log"), by_time.set_xlabel("training CPU time (s, earlier stages included)")
    by_time.set_ylabel(header)
    for ax in (by_steps, by_time):
        ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(f"{bench.upper()}: {header} (lower is better)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def replace_block(text: str, bench: str, table: str) -> str:
    """``text`` with its ``<!-- leaderboard:bench -->`` block holding ``table`` (a clear error if it has none)."""
    start, end = f"<!-- leaderboard:{bench} -->", f"<!-- /leaderboard:{bench} -->"
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"the README has no {start} ... {end} block for the {bench} table")
    return pattern.sub(lambda _: f"{start}\n{table}{end}", text)


def readme_block(text: str, bench: str) -> str | None:
    """The table inside README's block for ``bench`` (None: no block)."""
    match = re.search(rf"<!-- leaderboard:{bench} -->\n(.*?)<!-- /leaderboard:{bench} -->", text, re.S)
    return match.group(1) if match else None


TABLE_BLOCK = re.compile(r"<!-- table:(?P<path>\S+) -->\n(?P<body>.*?)<!-- /table -->", re.S)


def first_table(path: Path) -> str:
    """The first markdown table of a committed raw-output file (its ``|`` lines), as the README shows it."""
    if not path.is_file():
        raise SystemExit(f"the README quotes a table from {path}, which does not exist: rerun the command that "
                         "writes it (named next to the block) or fix the path")
    lines, started = [], False
    for line in path.read_text().splitlines():
        if line.startswith("|"):
            lines.append(line)
            started = True
        elif started:
            break
    if not lines:
        raise SystemExit(f"{path} holds no markdown table for the README to quote")
    return "\n".join(lines) + "\n"


def quoted_tables(text: str) -> list[tuple[str, str]]:
    """README's ``<!-- table:PATH -->`` blocks: (PATH relative to the repository, the table the block holds)."""
    return [(m["path"], m["body"]) for m in TABLE_BLOCK.finditer(text)]


def fill_quoted_tables(text: str) -> str:
    """``text`` with every ``<!-- table:PATH -->`` block holding PATH's first table: the README's other results
    tables are quoted from committed raw output, never typed."""
    return TABLE_BLOCK.sub(lambda m: f"<!-- table:{m['path']} -->\n{first_table(ROOT / m['path'])}<!-- /table -->",
                           text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", nargs="*", choices=BENCHES, default=[], help="benchmarks to (re)build")
    p.add_argument("--rescore", action="store_true", help="B1/B2: sample every student and the teacher again")
    p.add_argument("--config", default=str(HERE / "leaderboard.yaml"))
    p.add_argument("--out", default=str(HERE / "results" / "leaderboard"))
    p.add_argument("--readme", default=None, help="write every built table into this README's marked blocks")
    args = p.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for bench in args.bench:
        if bench == "b3":
            rows = toy_rows(config["b3"])
        else:
            if args.rescore:
                rescore(bench, config[bench], out / "raw")
            rows = scored_rows(bench, config[bench], out / "raw")
        table = markdown(bench, rows, config[bench])
        (out / f"{bench}.md").write_text(table)
        (out / f"{bench}.json").write_text(json.dumps({"bench": bench, "rows": rows}, indent=2))
        plot(bench, rows, out / f"{bench}_quality.png")
        print(table)
    if args.readme:
        readme = Path(args.readme)
        text = readme.read_text()
        for bench in BENCHES:
            table = out / f"{bench}.md"
            if table.is_file() and readme_block(text, bench) is not None:
                text = replace_block(text, bench, table.read_text())
        readme.write_text(fill_quoted_tables(text))
        print(f"updated the leaderboard blocks of {readme}")


if __name__ == "__main__":
    main()
