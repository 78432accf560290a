"""Reading the WebUI's own reports for errors that pass through our extension's files."""

from __future__ import annotations


def extension_errors_in_log(log_text: str, roots: list[str], script_names: list[str]) -> list[str]:
    """Log lines that put an error in our extension: a traceback frame in our files, or a script load failure.

    Only frames and load failures count: a path of ours in an ordinary message (a DEBUG line from git, our
    own notice of a preset file) is no error.
    """
    problems = []
    for line in log_text.splitlines():
        text = line.strip()
        if text.startswith('File "') and any(root in text for root in roots):
            problems.append(line)
        elif text.startswith("***") and any(f"Error loading script: {name}" in text for name in script_names):
            problems.append(line)
    return problems


def extension_exceptions(sysinfo: dict, roots: list[str]) -> list[dict]:
    """Exceptions the WebUI recorded (sysinfo "Exceptions") whose traceback passes through our files."""
    return [e for e in sysinfo["Exceptions"] if any(root in frame[0] for frame in e["traceback"] for root in roots)]
