"""The webui tier's helpers that need no WebUI: log and sysinfo scans, the extension link."""

import pytest

from .logscan import extension_errors_in_log, extension_exceptions, extension_problems_in_log

ROOTS = ["/x/extensions/copylora"]
LOAD_FAILURE = (
    "*** Error loading script: copylora.py\n"
    "    Traceback (most recent call last):\n"
    '      File "/x/modules/scripts.py", line 508, in load_scripts\n'
    '      File "/x/extensions/copylora/scripts/copylora.py", line 3, in <module>\n'
    "    NameError: name 'oops' is not defined\n"
    "---\n"
)
FOREIGN_FAILURE = (
    "*** Failed reading extension data from Git repository (copylora)\n"
    "    Traceback (most recent call last):\n"
    '      File "/x/modules/extensions.py", line 165, in do_read_info_from_repo\n'
    "    ValueError: Remote named 'origin' didn't exist\n"
)


def test_a_failure_in_our_script_is_found_by_its_header_and_frame():
    found = extension_errors_in_log(LOAD_FAILURE, ROOTS, ["copylora.py"])
    assert len(found) == 2
    assert found[0].startswith("*** Error loading script: copylora.py")
    assert found[1].strip().startswith('File "/x/extensions/copylora/scripts/copylora.py"')


def test_errors_outside_our_files_and_plain_mentions_are_not_ours():
    log = FOREIGN_FAILURE + "DEBUG [git.cmd] Popen(['git'], cwd=/x/extensions/copylora)\n"
    assert extension_errors_in_log(log, ROOTS, ["copylora.py"]) == []
    assert extension_errors_in_log(LOAD_FAILURE, ROOTS, ["other.py"]) != []  # the frame alone still counts


def test_our_error_records_and_warnings_from_our_files_are_problems_but_our_warnings_are_not():
    log = ("2026-01-01 10:00:00 ERROR [copylora] CopyLoRA API: internal error in POST /copylora/v1/merge\n"
           "2026-01-01 10:00:01 CRITICAL [copylora.train] gone\n"
           "/x/extensions/copylora/lib_copylora/ui/run_panel.py:50: GradioDeprecationWarning: unexpected argument\n")
    assert extension_problems_in_log(log, ROOTS, ["copylora.py"]) == log.splitlines()
    quiet = ("2026-01-01 10:00:00 WARNING [copylora] CopyLoRA: <lora:x:1:abc>: unknown preset abc\n"  # the user's
             "2026-01-01 10:00:00 ERROR [modules.shared_state] not ours\n"
             "2026-01-01 10:00:00 ERROR [copylorax] a logger that only starts like ours\n"
             "/x/modules/ui.py:3: GradioDeprecationWarning: the host's own\n")
    assert extension_problems_in_log(quiet, ROOTS, ["copylora.py"]) == []
    assert extension_problems_in_log(LOAD_FAILURE, ROOTS, ["copylora.py"]) == \
        extension_errors_in_log(LOAD_FAILURE, ROOTS, ["copylora.py"])


def test_recorded_exceptions_are_ours_only_through_our_frames():
    ours = {"exception": "boom", "traceback": [["/x/extensions/copylora/lib_copylora/webui/hook.py, line 4, f", "x"]]}
    theirs = {"exception": "Remote named 'origin' didn't exist",
              "traceback": [["/x/modules/extensions.py, line 165, do_read_info_from_repo", "y"]]}
    assert extension_exceptions({"Exceptions": [theirs, ours]}, ROOTS) == [ours]


def test_install_replaces_a_stale_link_and_refuses_a_real_folder(tmp_path):
    from .install import EXTENSION_NAME, install_extension

    extensions, old_target, repo = tmp_path / "extensions", tmp_path / "old", tmp_path / "repo"
    old_target.mkdir()
    repo.mkdir()
    extensions.mkdir()
    (extensions / EXTENSION_NAME).symlink_to(old_target)
    link = install_extension(extensions, repo)
    assert link.resolve() == repo.resolve()
    link.unlink()
    (extensions / EXTENSION_NAME).mkdir()
    (extensions / EXTENSION_NAME / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="real folder"):
        install_extension(extensions, repo)
    assert (extensions / EXTENSION_NAME / "keep.txt").read_text() == "mine"
