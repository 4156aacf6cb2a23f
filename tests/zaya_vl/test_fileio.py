"""zaya_vl.fileio: atomic writes and the exclusive output-folder lock (checked across real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from zaya_vl.fileio import LOCK_NAME, OutputLock, OutputLockedError, write_atomic


def test_write_atomic_text_and_bytes(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_atomic(target, "héllo\n")
    assert target.read_bytes() == "héllo\n".encode()
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]  # no temp file left


def test_write_atomic_unencodable_text_changes_nothing(tmp_path):
    target = tmp_path / "results.json"
    write_atomic(target, "old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "new \ud800 lone surrogate")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_write_atomic_killed_before_rename_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    write_atomic(target, "old")

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new" * 1000)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


HOLDER = textwrap.dedent("""
    import sys, time
    from zaya_vl.fileio import OutputLock
    lock = OutputLock(sys.argv[1], "holder").acquire()
    print("locked", flush=True)
    sys.stdin.readline()  # hold until told to go
""")


def _start_holder(folder):
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_second_live_run_is_refused_and_lock_released_on_exit(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(OutputLockedError, match=rf"in use by holder \(pid {holder.pid}"):
            OutputLock(tmp_path, "second").acquire()
    finally:
        holder.communicate("go\n", timeout=60)
    assert holder.returncode == 0
    assert not (tmp_path / LOCK_NAME).exists()  # released at exit
    with OutputLock(tmp_path, "third"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = _start_holder(tmp_path)
    holder.kill()  # SIGKILL: no atexit, the lock file stays behind
    holder.wait(timeout=60)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    with OutputLock(tmp_path, "next run"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_nested_acquire_in_one_process_keeps_the_lock_until_the_outer_release(tmp_path):
    outer = OutputLock(tmp_path).acquire()
    with OutputLock(tmp_path):
        pass
    assert (tmp_path / LOCK_NAME).exists()  # the inner release did not drop the outer holder's lock
    outer.release()
    assert not (tmp_path / LOCK_NAME).exists()
