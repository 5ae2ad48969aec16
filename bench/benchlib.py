"""What the bench scripts share: building the release binaries and finding them where cargo puts
them (`cargo metadata`'s target directory: $CARGO_TARGET_DIR, a relative one taken from the
repository as cargo takes it when run there, or target/), and writing a result table to
bench/out/ (ignored by git: a trial run leaves the repository as it was) and, with `--save`, also
to bench/results/, the tables BENCHMARKS.md quotes.

From a shell script:

    python3 bench/benchlib.py release-dir              # prints the release binaries' folder
    ... | python3 bench/benchlib.py write NAME [--save] # stdin to bench/out/NAME (and results/)
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
RESULTS = os.path.join(ROOT, "bench", "results")


def release_dir():
    """Where `cargo build --release` (run in the repository) puts the binaries."""
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                          check=True, capture_output=True, text=True).stdout
    return os.path.join(json.loads(meta)["target_directory"], "release")


def build(*what):
    """Builds prime_bin's release binaries (`what`: cargo's selection, e.g. "--bins"); their folder."""
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "prime_bin", *what], cwd=ROOT, check=True)
    return release_dir()


def add_save_flag(ap):
    ap.add_argument("--save", action="store_true",
                    help="also copy the result table to bench/results/ (what BENCHMARKS.md quotes); "
                         "without it, it goes to bench/out/ only")


def write(name, text, save):
    """Writes `text` to bench/out/NAME and, if `save`, copies it to bench/results/NAME; says where
    on stderr."""
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        f.write(text)
    where = os.path.relpath(path, ROOT)
    if save:
        os.makedirs(RESULTS, exist_ok=True)
        shutil.copyfile(path, os.path.join(RESULTS, name))
        print(f"written to {where} and bench/results/{name}", file=sys.stderr)
    else:
        print(f"written to {where} (--save also copies it to bench/results/{name})", file=sys.stderr)


def stop_all(procs, grace=5.0):
    """SIGTERM to every process of `procs` still running, then SIGKILL to those that have not
    exited within `grace` seconds (all of them together)."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    until = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tasks(pid):
    """The threads of process `pid` now: (thread id, name, CPU seconds, context switches) each,
    from /proc (a thread that ends meanwhile is left out)."""
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick
        switches = sum(int(m) for m in re.findall(r"ctxt_switches:\s+(\d+)", status))
        yield int(tid), name, cpu, switches


def main():
    if sys.argv[1:] == ["release-dir"]:
        print(release_dir())
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "write" and sys.argv[4:] in ([], ["--save"]):
        text = sys.stdin.read()
        write(sys.argv[2], text, len(sys.argv) == 4)
        sys.stdout.write(text)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
