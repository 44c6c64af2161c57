"""The metadata state machine alone: creates per second when applied in Raft-sized batches,
on-disk bytes per file, and whether memory grows with the file count (it must not: the
namespace lives in LMDB pages, not in Python dicts).

Usage: python bench/metadata_fsm.py [--files 1000000] [--batch 1000]
Writes bench/results/metadata_fsm.json. (The 3-MDS cluster figures come with the MDS
service: bench/metadata.py.)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vstore.metadata.fsm.namespace import InitRoot, Mkdir, Mknod, NamespaceStateMachine, encode_command  # noqa: E402
from vstore.metadata.fsm.schema import ROOT_INODE, Kind  # noqa: E402
from vstore.metadata.raft.statemachine import encode_proposal  # noqa: E402
from vstore.wire.raft import Entry  # noqa: E402


def rss_bytes() -> int:
    """Anonymous resident memory (Python objects): LMDB's file-backed mapped pages, which
    the kernel can drop at will, are not counted."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--per-dir", type=int, default=10_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "metadata_fsm.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vstore-bench-fsm-", dir=str(ROOT)) as tmp:
        sm = NamespaceStateMachine(Path(tmp) / "state", map_size_bytes=64 << 30)
        index = 0
        clock = 1_700_000_000_000_000_000

        def entry(op) -> Entry:  # type: ignore[no-untyped-def]
            nonlocal index
            index += 1
            return Entry.make(index, 1, encode_proposal("", 0, encode_command(op)))

        sm.apply([entry(InitRoot(uid=0, gid=0, now_ns=clock, mode=0o755))], {})
        next_inode = 2
        dirs = []
        for d in range((args.files + args.per_dir - 1) // args.per_dir):
            sm.apply([entry(Mkdir(uid=0, gid=0, now_ns=clock, parent=ROOT_INODE, name=f"d{d:05d}".encode(),
                                  mode=0o755, inode=next_inode))], {})
            dirs.append(next_inode)
            next_inode += 1
        samples = []
        started = time.perf_counter()
        rss_start = rss_bytes()
        created = 0
        while created < args.files:
            batch = []
            for _ in range(min(args.batch, args.files - created)):
                parent = dirs[created // args.per_dir]
                batch.append(entry(Mknod(uid=1000, gid=1000, now_ns=clock + created, parent=parent,
                                         name=f"file-{created:08d}.img".encode(), kind=Kind.FILE, mode=0o644,
                                         inode=next_inode)))
                next_inode += 1
                created += 1
            sm.apply(batch, {})
            if created % (args.files // 10 or 1) == 0:
                samples.append({"files": created, "rss_bytes": rss_bytes(),
                                "elapsed_s": time.perf_counter() - started})
        elapsed = time.perf_counter() - started
        sm.sync()
        data_bytes = (Path(tmp) / "state" / "data.mdb").stat().st_size
        info = sm.env.info()
        stat = sm.env.stat()
        used_bytes = (info["last_pgno"] + 1) * stat["psize"]
        sm.close()
    result = {"benchmark": "metadata_fsm", "files": args.files, "batch_entries": args.batch,
              "creates_per_s": args.files / elapsed, "elapsed_s": elapsed,
              "lmdb_used_bytes_per_file": used_bytes / args.files, "lmdb_file_bytes": data_bytes,
              "rss_start_bytes": rss_start, "rss_end_bytes": rss_bytes(),
              "rss_growth_bytes_per_file": (samples[-1]["rss_bytes"] - samples[0]["rss_bytes"])
              / max(1, samples[-1]["files"] - samples[0]["files"]) if len(samples) > 1 else None,
              "samples": samples, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
