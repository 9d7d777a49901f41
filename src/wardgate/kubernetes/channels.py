"""The channel protocol of exec and attach over WebSocket (``v5.channel.k8s.io`` and
``v4.channel.k8s.io``, k8s.io/apimachinery ``util/remotecommand``): every binary
message starts with its channel's byte, 0 stdin, 1 stdout, 2 stderr, 3 error (the
command's ending, a ``Status`` object), 4 resize (``{"Width":..,"Height":..}``) and,
in v5 only, 255 close (its one payload byte names the channel the sender closes).

Pure: bytes in, values out; the pump is kubernetes/exec.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
CHANNEL_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
# The gateway's own exit statuses, as the SSH gateway gives them (ssh/session.py).
EXIT_BLOCKED = 126
EXIT_PENDING = 77
EXIT_UNREACHABLE = 255


class ChannelError(ValueError):
    """A message that is not one of the channel protocol's."""


@dataclass(frozen=True, slots=True)
class Frame:
    channel: int
    data: bytes


def parse_frame(message: bytes) -> Frame:
    if not message:
        raise ChannelError("an empty channel message")
    channel = message[0]
    if channel not in (STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE):
        raise ChannelError(f"unknown channel {channel}")
    return Frame(channel, bytes(message[1:]))


def frame(channel: int, data: bytes) -> bytes:
    return bytes([channel]) + data


def resize_of(data: bytes) -> tuple[int, int] | None:
    """Width and height of a resize message, or None when it is not one."""
    try:
        size = json.loads(data)
        width, height = int(size["Width"]), int(size["Height"])
    except (ValueError, KeyError, TypeError):
        return None
    return width, height


def exit_status(data: bytes) -> int | None:
    """The exit status a ``Status`` on the error channel reports: 0 for Success, the
    ``ExitCode`` cause of a NonZeroExitCode failure, None for any other failure."""
    try:
        status = json.loads(data)
    except ValueError:
        return None
    if not isinstance(status, dict):
        return None
    if status.get("status") == "Success":
        return 0
    if status.get("reason") != "NonZeroExitCode":
        return None
    for cause in (status.get("details") or {}).get("causes") or []:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message", ""))
            except ValueError:
                return None
    return None


def exit_frame(code: int, message: str = "") -> bytes:
    """The error-channel message ending a session with exit status ``code``: kubectl
    exits with that status ("command terminated with exit code N")."""
    if code == 0:
        status: dict[str, object] = {"metadata": {}, "status": "Success"}
    else:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": message or f"command terminated with non-zero exit code: {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    return frame(ERROR, json.dumps(status, separators=(",", ":")).encode())


def failure_frame(message: str) -> bytes:
    """An error-channel ``Status`` failure: kubectl prints ``error: <message>``."""
    status = {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"}
    return frame(ERROR, json.dumps(status, separators=(",", ":")).encode())
