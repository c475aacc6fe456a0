"""Summarize py-spy raw (collapsed) profiles written by ``bench.run --profile DIR``.

    .venv/bin/python -m bench.flame DIR/e2e_on.worker.txt [--top 25] [--match predq]

For each process in the file (py-spy ``--subprocesses`` puts ``process PID:"cmdline"`` as
the root frame): its share of the samples, then the functions with the most *inclusive*
samples (on the stack) and the most *self* samples (on top of the stack).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

_PROC = re.compile(r'^process (\d+):"?(.*?)"?$')


def load(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    by_proc: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        proc = "?"
        m = _PROC.match(frames[0])
        if m:
            proc = f"{m.group(1)} {m.group(2)[:60]}"
            frames = frames[1:]
        by_proc[proc].append((frames, int(count)))
    return by_proc


def short(frame: str) -> str:
    # "func (path/to/mod.py:123)" -> "func (mod.py:123)"
    m = re.match(r"^(.*?) \((.*?)(?::(\d+))?\)$", frame)
    if not m:
        return frame
    fn, path, line = m.groups()
    parts = path.split("/")
    tail = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{fn} ({tail}{':' + line if line else ''})"


def summarize(path: Path, top: int, match: str | None, lines_: bool) -> None:
    by_proc = load(path)
    grand = sum(c for stacks in by_proc.values() for _, c in stacks)
    print(f"== {path.name}: {grand} samples")
    for proc, stacks in sorted(by_proc.items(), key=lambda kv: -sum(c for _, c in kv[1])):
        total = sum(c for _, c in stacks)
        print(f"\n-- process {proc}: {total} samples ({100 * total / max(grand, 1):.0f}%)")
        incl: Counter[str] = Counter()
        self_: Counter[str] = Counter()
        for frames, c in stacks:
            names = [short(f) if lines_ else re.sub(r":\d+\)$", ")", short(f)) for f in frames]
            for n in set(names):
                incl[n] += c
            if names:
                self_[names[-1]] += c
        print("  inclusive:")
        shown = 0
        for n, c in incl.most_common():
            if match and match not in n:
                continue
            print(f"    {100 * c / total:5.1f}%  {n}")
            shown += 1
            if shown >= top:
                break
        print("  self:")
        for n, c in self_.most_common(top):
            print(f"    {100 * c / total:5.1f}%  {n}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.flame")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", default=None, help="only inclusive frames containing this")
    p.add_argument("--lines", action="store_true", help="keep line numbers")
    a = p.parse_args()
    for f in a.files:
        summarize(f, a.top, a.match, a.lines)


if __name__ == "__main__":
    main()
