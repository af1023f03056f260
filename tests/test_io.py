"""Crash-safe writes (nanoft.io): fsync order, full or unwritable disks as one clear error, folders."""
import errno
import json
import os
import sys

import pytest

import nanoft.io as nio
from nanoft.errors import NanoftError


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".old"))


def test_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(nio.os, "fsync", fsync)
    monkeypatch.setattr(nio.os, "replace", replace)
    target = tmp_path / "results.json"
    nio.atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert os.path.basename(events[0][1]).startswith(".results.json.")  # the temp file's own bytes
    assert events[2][1] == str(tmp_path)  # the folder, so the rename itself survives a power cut


@pytest.mark.parametrize("where", ["write", "replace"])
def test_no_space_keeps_the_old_file_and_says_so_in_one_line(tmp_path, monkeypatch, where):
    target = tmp_path / "metrics.json"
    target.write_text("old content\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "replace":
        monkeypatch.setattr(nio.os, "replace", full)
        write = lambda f: f.write(b"new content\n")  # noqa: E731
    else:
        def write(f):  # half the bytes land, then the disk is full
            f.write(b"new co")
            full()

    with pytest.raises(NanoftError) as info:
        nio.atomic_write_bytes(target, write)
    message = str(info.value)
    assert message == f"no space left on device writing {target} (free space or choose another --output)"
    assert "\n" not in message and info.value.path == str(target)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert target.read_text() == "old content\n"
    assert _leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("code, what", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system"),
                                        (errno.EDQUOT, "disk quota exceeded")])
def test_unwritable_folder_is_one_clear_error(tmp_path, monkeypatch, code, what):
    # Tests run as root, whom chmod does not stop: the folder refusing new files is simulated.
    target = tmp_path / "config.toml"
    target.write_text("old\n")

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(nio.tempfile, "mkstemp", refuse)
    with pytest.raises(NanoftError, match=f"^{what} writing {target} \\(") as info:
        nio.atomic_write_text(target, "new\n")
    assert "\n" not in str(info.value)
    assert target.read_text() == "old\n" and _leftovers(tmp_path) == []


def test_caller_names_its_own_fix_and_other_os_errors_pass_through(tmp_path, monkeypatch):
    def broken(f):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError) as info:  # not a user problem: not dressed up as one
        nio.atomic_write_bytes(tmp_path / "x", broken)
    assert not isinstance(info.value, NanoftError) and info.value.errno == errno.EIO

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(NanoftError, match=r"\(set \$NANOFT_CACHE_DIR elsewhere\)$"):
        nio.atomic_write_bytes(tmp_path / "x", full, fix="set $NANOFT_CACHE_DIR elsewhere")
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_a_full_disk_as_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    from nanoft.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "runs").mkdir()
    out = tmp_path / "report.md"
    monkeypatch.setattr(nio.os, "replace", full)
    monkeypatch.setattr(sys, "argv", ["nanoft", "report", str(tmp_path / "runs"), "--output", str(out)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: no space left on device writing {out} (free space or choose another --output)\n"
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]  # no report, no temp file


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_replace_dir_swaps_whole_folders(tmp_path):
    final, tmp = tmp_path / "checkpoint", tmp_path / "checkpoint.tmp"
    (final / "sub").mkdir(parents=True)
    (final / "sub" / "a.txt").write_text("old a")
    (final / "gone.txt").write_text("only in the old one")
    (tmp / "sub").mkdir(parents=True)
    (tmp / "sub" / "a.txt").write_text("new a")
    nio.atomic_replace_dir(tmp, final)
    assert _tree(final) == {"sub/a.txt": "new a"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert nio.recover_dir(final) is False  # nothing to recover


def test_crash_between_the_two_renames_is_recovered(tmp_path, monkeypatch):
    final, tmp = tmp_path / "checkpoint", tmp_path / "checkpoint.tmp"
    final.mkdir()
    (final / "state.json").write_text("step 10")
    tmp.mkdir()
    (tmp / "state.json").write_text("step 20")
    real_replace, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies after moving the old folder aside
        real_replace(src, dst)

    monkeypatch.setattr(nio.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        nio.atomic_replace_dir(tmp, final)
    monkeypatch.setattr(nio.os, "replace", real_replace)
    assert not final.exists()
    assert nio.recover_dir(final) is True
    assert _tree(final) == {"state.json": "step 10"}  # the last whole checkpoint, not a mix


def test_replace_dir_full_disk_is_one_clear_error(tmp_path, monkeypatch):
    final, tmp = tmp_path / "export", tmp_path / "export.tmp"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"x")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nio.os, "fsync", full)
    with pytest.raises(NanoftError, match=f"^no space left on device writing {final} "):
        nio.atomic_replace_dir(tmp, final)
    assert not final.exists()


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    """A run directory is shared (other users, other nodes): files must not stay private like a temp file."""
    import stat

    from nanoft.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644
