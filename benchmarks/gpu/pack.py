"""Pack wheels and data files into send folders for the GPU machine (called by prepare.sh; runs here).

Everything that must travel is laid out as one stream: the wheels first (never split, all in send1),
then each data file in the order given, cut into pieces wherever a send folder is full. A send folder
holds at most --limit-mib minus the working tree's size (which travels with every call), so every call
that carries one send folder stays under --limit-mib in all.

Writes, under --dest:
  sendN/wheels/*.whl          (send1 only)
  sendN/parts/<piece>         byte ranges of the data files
  sendN/manifest/files.tsv    dest, bytes, sha256, pieces, unpack (- or tar), of each whole file
  sendN/manifest/pieces.tsv   piece, dest, index, bytes, send
  sendN/manifest/wheels.tsv   wheel, bytes, sha256, send
(the manifest is the same in every send folder), and sizes.tsv (send, bytes, what) beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20
CHUNK = 4 * MIB


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def tree_bytes(repo: Path) -> int:
    """Bytes of what travels with every call: tracked and untracked-not-ignored files, and shared/."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, check=True,
                         capture_output=True).stdout
    total = sum(os.path.getsize(repo / name) for name in out.decode().split("\0")
                if name and (repo / name).is_file() and not (repo / name).is_symlink())
    shared = repo / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file() and not p.is_symlink())
    return total


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_requirements(wheels: list[Path], there: set[str]) -> list[str]:
    """Requirements (Requires-Dist without extras, for CPython 3.12 on Linux) of the wheels that are
    neither among the wheels nor in `there` (the GPU machine's package list)."""
    import zipfile

    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare python3: no markers evaluated, every non-extra requirement counted
        Requirement = None
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    ours = {normalise(w.name.split("-")[0]) for w in wheels}
    missing = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            lines = z.read(meta).decode("utf-8", "replace").splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            spec = line.split(":", 1)[1].strip()
            if "extra" in spec.split(";", 1)[-1] and ";" in spec:
                continue
            if Requirement is not None:
                req = Requirement(spec)
                if req.marker is not None and not req.marker.evaluate(env):
                    continue
                name = normalise(req.name)
            else:
                name = normalise(re.split(r"[\s;<>=!~\[(]", spec, maxsplit=1)[0])
            if name not in ours and name not in there:
                missing.append(f"{wheel.name}: {spec}")
    return missing


def packages_there(kinds_md: Path) -> set[str]:
    """Package names of the nvidia-h200 image, from KINDS.md's 'Python packages already there'."""
    text = kinds_md.read_text()
    m = re.search(r"nvidia-h200:.*?Packages:(.*?)\.\s*$", text, re.M | re.S)
    if not m:
        return set()
    return {normalise(n.strip()) for n in m.group(1).split(",") if n.strip()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", type=Path, required=True, help="the .gpu folder")
    p.add_argument("--repo", type=Path, default=Path("."))
    p.add_argument("--limit-mib", type=float, default=60.0, help="most MiB one call carries, tree included")
    p.add_argument("--wheels", type=Path, required=True, help="folder of the wheels (all go into send1)")
    p.add_argument("--item", action="append", default=[], metavar="DEST=SRC",
                   help="a data file, in stream order; DEST is its path under the remote data folder")
    p.add_argument("--untar", action="append", default=[], metavar="DEST", help="an item to unpack with tar there")
    p.add_argument("--kinds", type=Path, help="KINDS.md, to check the wheels' requirements against")
    p.add_argument("--plan", action="append", default=[], metavar="NAME=PREFIX=STEPS",
                   help="print the device calls of a plan: the send folders holding the wheels and every "
                        "piece of the data files whose DEST starts with PREFIX, then the remote.sh STEPS")
    args = p.parse_args()

    tree = tree_bytes(args.repo)
    capacity = int(args.limit_mib * MIB) - tree
    print(f"working tree that travels with every call: {tree / MIB:.2f} MiB; per send folder: "
          f"at most {capacity / MIB:.2f} MiB (limit {args.limit_mib:g} MiB per call)")
    if capacity < 8 * MIB:
        sys.exit("pack.py: less than 8 MiB left per call after the working tree; raise --limit-mib")

    wheels = sorted(args.wheels.glob("*.whl"))
    names = [normalise(w.name.split("-")[0]) for w in wheels]
    if len(set(names)) != len(names):
        sys.exit(f"pack.py: two versions of one package in {args.wheels}: {[w.name for w in wheels]}")
    if args.kinds and args.kinds.is_file():
        there = packages_there(args.kinds)
        missing = check_requirements(wheels, there)
        print(f"requirements of the wheels checked against {args.kinds.name} ({len(there)} packages there): "
              + ("all met" if not missing else "NOT met:\n  " + "\n  ".join(missing)))

    for old in args.dest.glob("send*"):
        shutil.rmtree(old)

    sends: dict[int, list[str]] = {}
    used: dict[int, int] = {}
    files_rows, piece_rows, wheel_rows = [], [], []

    def folder(send: int, sub: str) -> Path:
        d = args.dest / f"send{send}" / sub
        d.mkdir(parents=True, exist_ok=True)
        return d

    wheel_bytes = sum(w.stat().st_size for w in wheels)
    if wheel_bytes > capacity:
        sys.exit(f"pack.py: the wheels ({wheel_bytes / MIB:.1f} MiB) do not fit in one send folder")
    for w in wheels:
        shutil.copy2(w, folder(1, "wheels") / w.name)
        wheel_rows.append((w.name, str(w.stat().st_size), sha256(w), "send1"))
    used[1] = wheel_bytes
    sends[1] = [f"{len(wheels)} wheels ({wheel_bytes / MIB:.1f} MiB)"]

    send = 1
    for item in args.item:
        dest, src = item.split("=", 1)
        src_path = Path(src)
        size = src_path.stat().st_size
        digest = sha256(src_path)
        offset, index = 0, 0
        with open(src_path, "rb") as f:
            while offset < size or (size == 0 and index == 0):
                room = capacity - used.get(send, 0)
                if room < MIB and size - offset > room:  # no slivers: start the next send folder
                    send += 1
                    continue
                take = min(size - offset, room)
                piece = f"{dest.replace('/', '__')}.p{index:02d}"
                with open(folder(send, "parts") / piece, "wb") as out:
                    left = take
                    while left:
                        block = f.read(min(CHUNK, left))
                        out.write(block)
                        left -= len(block)
                piece_rows.append((piece, dest, str(index), str(take), f"send{send}"))
                used[send] = used.get(send, 0) + take
                sends.setdefault(send, []).append(f"{dest} [{offset / MIB:.1f}-{(offset + take) / MIB:.1f} MiB]")
                offset += take
                index += 1
                if size == 0:
                    break
        unpack = "tar" if dest in args.untar else "-"
        files_rows.append((dest, str(size), digest, str(index), unpack))

    for s in sends:
        m = folder(s, "manifest")
        for name, rows, head in (("files.tsv", files_rows, "dest\tbytes\tsha256\tpieces\tunpack"),
                                 ("pieces.tsv", piece_rows, "piece\tdest\tindex\tbytes\tsend"),
                                 ("wheels.tsv", wheel_rows, "wheel\tbytes\tsha256\tsend")):
            (m / name).write_text(head + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    with open(args.dest / "sizes.tsv", "w") as f:
        f.write(f"# tree_bytes\t{tree}\n# limit_mib\t{args.limit_mib:g}\n")
        for s in sorted(sends):
            f.write(f"send{s}\t{used[s]}\t{'; '.join(sends[s])}\n")
    for dest, size, digest, pieces, unpack in files_rows:
        print(f"  {dest}: {int(size) / MIB:.1f} MiB in {pieces} piece(s), sha256 {digest[:16]}..."
              + (" (tar, unpacked there)" if unpack == "tar" else ""))
    print("send folders (carried payload; each call also carries the working tree):")
    for s in sorted(sends):
        print(f"  .gpu/send{s}: {used[s] / MIB:5.1f} MiB (+ tree {tree / MIB:.1f} = {(used[s] + tree) / MIB:.1f} MiB): "
              + "; ".join(sends[s]))
    lines = []
    for spec in args.plan:
        name, prefix, steps = spec.split("=", 2)
        needed = sorted({1} | {int(r[4][4:]) for r in piece_rows if r[1].startswith(prefix)})
        calls: list[list[int]] = []
        for s in needed:  # consecutive send folders share a call while they fit
            if calls and sum(used[t] for t in calls[-1]) + used[s] + tree <= args.limit_mib * MIB:
                calls[-1].append(s)
            else:
                calls.append([s])
        lines.append(f"plan '{name}': {len(calls)} device call(s), one right after the other (the machine goes "
                     "back about 30 s after a call ends):")
        for i, group in enumerate(calls, 1):
            command = "bash benchmarks/gpu/remote.sh receive" + (f" {steps}" if i == len(calls) else "")
            if i == 1 < len(calls) and "study" in steps:  # the GPU path checked before the data has all come
                command += " check smoke"
            carry = ", ".join(f'".gpu/send{s}"' for s in group)
            mib = (sum(used[s] for s in group) + tree) / MIB
            lines.append(f"  call {i}: command: {command}\n          carry: [{carry}]   ({mib:.1f} MiB with the tree)")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (args.dest / "PLAN.txt").write_text(text)


if __name__ == "__main__":
    main()
