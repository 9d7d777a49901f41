"""SFTP (and scp, which OpenSSH 9 runs over SFTP) through the gateway.

Allowed or blocked per role (``sftp: allow``). When allowed, every operation is passed
to an SFTP session on the target opened with the gateway's credential, and each file
transfer (path, direction, bytes) and each change (remove, rename, mkdir...) is recorded.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from wardgate.actions import Verdict
from wardgate.ssh.upstream import TargetUnavailable
from wardgate.sshlib import asyncssh

if TYPE_CHECKING:
    from wardgate.ssh.server import GatewayConnection


def sftp_factory(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
    return ForwardingSFTP(chan)


@dataclass
class _Transfer:
    path: str
    started: float
    t0: float
    read: int = 0
    written: int = 0


class ForwardingSFTP(asyncssh.SFTPServer):
    def __init__(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        super().__init__(chan)
        self.owner = cast("GatewayConnection", chan.get_connection().get_owner())
        self._client: asyncssh.SFTPClient | None = None
        self._verdict: Verdict | None = None
        self._files: dict[int, _Transfer] = {}

    async def _sftp(self, what: str) -> asyncssh.SFTPClient:
        owner = self.owner
        if self._verdict is None:
            refusal = owner.refusal()
            if refusal is not None:
                raise asyncssh.SFTPPermissionDenied(refusal)
            self._verdict = owner.feature("sftp")
        if not self._verdict.lets_through:
            self._record(what, "blocked")
            raise asyncssh.SFTPPermissionDenied(
                f"wardgate: file transfer (SFTP/scp) is not allowed for you on connection "
                f"{owner.connection_name!r} ({self._verdict.reason})"
            )
        if self._client is None:
            try:
                upstream = await owner.upstream()
            except TargetUnavailable as exc:
                raise asyncssh.SFTPConnectionLost(f"wardgate: {exc.reason}") from None
            self._client = await upstream.start_sftp_client()
        return self._client

    def _record(
        self, text: str, status: str, started: float | None = None, t0: float | None = None
    ) -> None:
        self.owner.record_feature(text, self._verdict, status, kind="sftp", started=started, t0=t0)

    # -- files --------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        name = _text(path)
        client = await self._sftp(f"open {name}")
        handle = await client.open(path, pflags, attrs, encoding=None)
        self._files[id(handle)] = _Transfer(name, time.time(), time.perf_counter())
        return handle

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        data: bytes = await file_obj.read(size, offset)  # type: ignore[attr-defined]
        self._files[id(file_obj)].read += len(data)
        return data

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        await file_obj.write(data, offset)  # type: ignore[attr-defined]
        self._files[id(file_obj)].written += len(data)
        return len(data)

    async def close(self, file_obj: object) -> None:
        await file_obj.close()  # type: ignore[attr-defined]
        t = self._files.pop(id(file_obj), None)
        if t is not None:
            parts = []
            if t.read:
                parts.append(f"download {t.path} ({t.read} bytes)")
            if t.written:
                parts.append(f"upload {t.path} ({t.written} bytes)")
            self._record("; ".join(parts) or f"open {t.path} (0 bytes)", "ok", t.started, t.t0)

    async def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        attrs: asyncssh.SFTPAttrs = await file_obj.stat()  # type: ignore[attr-defined]
        return attrs

    async def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        await file_obj.setstat(attrs)  # type: ignore[attr-defined]

    # -- paths --------------------------------------------------------------------------

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return await (await self._sftp(f"stat {_text(path)}")).stat(path)

    async def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return await (await self._sftp(f"stat {_text(path)}")).lstat(path)

    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self._change(f"setstat {_text(path)}", "setstat", path, attrs)

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        client = await self._sftp(f"list {_text(path)}")
        async for entry in client.scandir(path):
            yield entry

    async def realpath(self, path: bytes) -> bytes:
        result = await (await self._sftp(f"realpath {_text(path)}")).realpath(path)
        return result if isinstance(result, bytes) else str(result).encode()

    async def readlink(self, path: bytes) -> bytes:
        result = await (await self._sftp(f"readlink {_text(path)}")).readlink(path)
        return result if isinstance(result, bytes) else str(result).encode()

    async def statvfs(self, path: bytes) -> asyncssh.SFTPVFSAttrs:
        return await (await self._sftp(f"statvfs {_text(path)}")).statvfs(path)

    async def remove(self, path: bytes) -> None:
        await self._change(f"remove {_text(path)}", "remove", path)

    async def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self._change(f"mkdir {_text(path)}", "mkdir", path, attrs)

    async def rmdir(self, path: bytes) -> None:
        await self._change(f"rmdir {_text(path)}", "rmdir", path)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._change(f"rename {_text(oldpath)} {_text(newpath)}", "rename", oldpath, newpath)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._change(
            f"rename {_text(oldpath)} {_text(newpath)}", "posix_rename", oldpath, newpath
        )

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        await self._change(
            f"symlink {_text(oldpath)} {_text(newpath)}", "symlink", oldpath, newpath
        )

    async def _change(self, text: str, method: str, *args: Any) -> None:
        client = await self._sftp(text)
        started, t0 = time.time(), time.perf_counter()
        try:
            await getattr(client, method)(*args)
        except asyncssh.SFTPError:
            self._record(text, "error", started, t0)
            raise
        self._record(text, "ok", started, t0)

    def exit(self) -> None:
        if self._client is not None:
            self._client.exit()


def _text(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")
