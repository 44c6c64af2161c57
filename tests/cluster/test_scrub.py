"""``vstore scrub`` (issue 7) on a real cluster of processes (3 MDS + 3 chunkservers): clean
files scrub clean with the right counts; a byte flipped in one replica's chunk file on disk is
found, named (file, chunk, chunkserver, block) and exits 1; the cluster then drops and rebuilds
that replica and the scrub is clean again; a path that does not exist is one line, exit 2.

The chunkservers' background scrubber is off, so the flip is found by ``vstore scrub`` and by
nothing else (the background one would report it on its own, and the scrub would then see an
under-replicated chunk instead of the bad replica)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.fsprocs import FsCluster, cs_config, write_files
from tests.harness.procs import vstore
from tests.harness.wait import wait_for
from vstore.chunkserver import chunkfile
from vstore.metadata.fsm.schema import ROOT_INODE
from vstore.wire import mds as w

pytestmark = pytest.mark.timeout(300)

CHUNK = 1 << 20
BLOCK = 4096
TIMERS = {"cs_offline_after_s": 2, "cs_failed_after_s": 30, "write_lease_s": 2, "capability_skew_s": 1}


class QuietScrubberCluster(FsCluster):
    """FsCluster whose chunkservers do no background scrubbing."""

    def start_cs(self, name: str) -> None:
        path = cs_config(self, name)
        path.write_text(path.read_text() + "scrub_rate_bytes_per_s = 0\n")  # [chunkserver] is the last section
        self.group.python(name, "vstore.cli.main", "serve", "-c", str(path))


def scrub(config: Path, *args: str) -> tuple[int, str, str]:
    done = vstore("scrub", "-c", str(config), *args, timeout=120)
    return done.returncode, done.stdout, done.stderr


def flip_data_byte(cluster: FsCluster, cs_id: int, chunk_id: int, at: int) -> None:
    """Flip one bit of the byte ``at`` of the chunk's content in that chunkserver's replica file
    (a data byte: past the header and the checksum table)."""
    path = cluster.root / cluster.cs_name_of(cs_id) / "chunks" / chunkfile.chunk_file_name(chunk_id)
    with open(path, "r+b") as fh:
        header = chunkfile.decode_header(fh.read(chunkfile.HEADER_BYTES))
        assert at < header.length_bytes
        fh.seek(header.data_offset + at)
        byte = fh.read(1)
        fh.seek(header.data_offset + at)
        fh.write(bytes([byte[0] ^ 0x20]))


async def test_scrub_finds_a_flipped_byte_names_it_and_is_clean_again_after_the_rebuild(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cluster = QuietScrubberCluster(tmp_path, ("m1", "m2", "m3"), chunk_bytes=CHUNK, mds_extra=TIMERS)
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        config = cluster.client_config("scrubber")
        a, b = os.urandom(2 * CHUNK + CHUNK // 2 + 17), os.urandom(100_000)
        await write_files(config, {"/data/a.img": a, "/data/sub/b": b, "/elsewhere": os.urandom(5000)})

        code, out, err = scrub(config, "/data", "--json")
        assert code == 0, out + err
        assert err == "", "no progress bar and no noise when stderr is not a terminal"
        report = json.loads(out)
        assert report["clean"] and report["path"] == "/data" and report["cluster"] == "test"
        assert (report["files"], report["chunks"], report["replicas_listed"], report["replicas_good"]) == (2, 4, 12, 12)
        assert report["bytes_verified"] == 3 * (len(a) + len(b)), "every replica read to its end"
        assert report["file_bytes"] == len(a) + len(b)
        assert report["bad_count"] == report["unreachable_count"] == report["lost_count"] == 0

        whole = scrub(config)  # default path: the root, so /elsewhere too
        assert whole[0] == 0 and "CLEAN" in whole[1] and "files 3, chunks 5, replicas checked 15 of 15" in whole[1]

        link = await cluster.link()
        inode = (await link.lookup((await link.lookup(ROOT_INODE, b"data")).inode, b"a.img")).inode
        mapped = await link.call(w.ChunkMapRequest(uid=0, gid=0, inode=inode, first_index=1, count=1))
        assert isinstance(mapped, w.ChunkMapReply)
        (info,) = mapped.chunks
        bad_cs = info.replicas[1].cs_id
        flip_data_byte(cluster, bad_cs, info.chunk_id, 3 * BLOCK + 1234)

        code, out, err = scrub(config, "/data")
        assert code == 1, out + err
        assert "PROBLEMS FOUND" in out and "bad replicas 1," in out
        line = next(x for x in out.splitlines() if "/data/a.img chunk 1 " in x)
        assert f"id {info.chunk_id:016x} v{info.version}) on cs {bad_cs} " in line
        assert "CHECKSUM_MISMATCH (block 3, byte 12288 of the chunk)" in line
        assert "replicas checked 12 of 12 listed (11 good)" in out

        # the chunkserver reported the damage: the MDS drops the replica and rebuilds it from a
        # good one; until then a scrub sees the chunk under-replicated, then clean
        seen: list[dict] = []

        def clean_again() -> bool:
            code, out, _ = scrub(config, "/data", "--json")
            report = json.loads(out)  # --json parses whatever was found
            seen.append(report)
            return code == 0 and report["replicas_good"] == 12
        await wait_for(clean_again, timeout_s=120, interval_s=1.0,
                       what="scrub clean again after the damaged replica was rebuilt")
        assert all(r["bad_count"] == 0 for r in seen), "the damaged replica is never listed again"
        assert all(r["lost_count"] == 0 for r in seen)


async def test_scrub_of_a_path_that_does_not_exist_is_one_line_and_exit_2(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cluster = FsCluster(tmp_path, ("m1",), chunkservers=0)
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        config = cluster.client_config("scrubber")
        code, out, err = scrub(config, "/nowhere")
        assert (code, out, err) == (2, "", "vstore: no such path in the cluster: /nowhere\n")
        code, out, err = scrub(config, "relative/path")
        assert code == 2 and err.count("\n") == 1 and "from the cluster's root" in err
        code, out, err = scrub(config, "--jobs", "0")
        assert code == 2 and err.count("\n") == 1 and "--jobs" in err
        code, out, _ = scrub(config, "/", "--json")  # an empty file system is clean
        assert code == 0 and json.loads(out)["files"] == 0
