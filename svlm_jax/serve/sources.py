"""Server-side sources and uploads: which files and URLs a session may name (`SourcePolicy`), opening them with
`video.FrameStream` paced to real time (`SourcePump`), and uploaded files with quotas and expiry (`Uploads`).

A session's "url" source is whatever a client typed, so nothing is opened unless the operator allowed it:
files only under `--source-root` directories (symlinks resolved, regular files only), URLs only under an
`--allow-url` prefix (scheme, host, port and path prefix compared as parsed, and a host that resolves to a
loopback, link-local or private address refused unless the prefix names that address). FFmpeg is held to
the source's own protocols (`protocol_whitelist`), to media demuxers (`format_whitelist`: no playlists or
concat lists that could name further files or URLs) and to no HTTP redirects.
"""
from __future__ import annotations

import dataclasses
import io
import ipaddress
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
import urllib.parse
from typing import Callable

import numpy as np
from PIL import Image

from svlm_jax.serve.frames import last_sample_time, make_second
from svlm_jax.video import VIDEO_MIN_PIXELS, FrameStream, Second, resize_with

# Demuxers of plain media containers. Playlists (hls, dash), concat lists and image sequences are left out:
# they name further files or URLs, which would let a client reach what the policy refuses.
MEDIA_FORMATS = "mov,mp4,matroska,webm,avi,mpegts,flv,ogg,mpeg,m4v,h264,hevc,mjpeg,gif,asf,nut,ivf,rtsp"
URL_PROTOCOLS = {"http": "http,tcp", "https": "https,tls,tcp", "rtsp": "rtsp,rtp,srtp,udp,tcp",
                 "rtmp": "rtmp,tcp"}
DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtmp": 1935}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# What a client learns when its source is refused or fails: the same sentence whatever the reason, so the
# answers tell nothing about the host's files or network (the operator's log has the reason).
REFUSED = ("The source cannot be streamed: this server does not allow it, or it is not a readable video; "
           "stream your camera or upload the file instead.")


class SourceRefused(Exception):
    """Why a source is not opened, for the operator's log only (clients get REFUSED)."""


@dataclasses.dataclass(frozen=True)
class _Prefix:
    scheme: str
    host: str
    port: int
    userinfo: str
    path: str
    literal: bool  # the host is an IP address: the prefix names that address


def _split(url: str) -> tuple[str, str, int, str, str]:
    """url -> (scheme, host, port, userinfo, path), lower-cased where case does not matter; ValueError if bad."""
    u = urllib.parse.urlsplit(url)
    scheme, host = u.scheme.lower(), (u.hostname or "").lower()
    if scheme not in URL_PROTOCOLS or not host:
        raise ValueError(f"{url!r} is not an {'/'.join(URL_PROTOCOLS)} URL with a host")
    port = u.port or DEFAULT_PORTS[scheme]  # u.port raises ValueError for a bad port
    userinfo = u.netloc.rpartition("@")[0] if "@" in u.netloc else ""
    return scheme, host, port, userinfo, u.path or "/"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def parse_prefix(prefix: str) -> _Prefix:
    """An --allow-url PREFIX -> its parsed parts; ValueError names a prefix that is not a usable URL."""
    try:
        scheme, host, port, userinfo, path = _split(prefix)
    except ValueError as e:
        raise ValueError(f"--allow-url {prefix!r} is not a URL prefix such as rtsp://camera.example/ ({e}).") from None
    return _Prefix(scheme, host, port, userinfo, path, _is_ip(host))


def _path_under(path: str, prefix: str) -> bool:
    if prefix in ("", "/") or path == prefix:
        return True
    return path.startswith(prefix if prefix.endswith("/") else prefix + "/")


def _resolve_host(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


class SourcePolicy:
    """Which server-side files and URLs sessions may stream. roots: directories; prefixes: URL prefixes.

    `resolve(source)` -> (what FFmpeg opens, FFmpeg options), or SourceRefused with the reason. It may look up
    a host name (blocking), so call it off the event loop.
    """

    def __init__(self, roots=(), prefixes=(), *, resolve_host: Callable[[str, int], list[str]] = _resolve_host):
        self.roots = [os.path.realpath(r) for r in roots]
        self.prefixes = [parse_prefix(p) for p in prefixes]
        self.resolve_host = resolve_host

    @property
    def enabled(self) -> bool:
        """Whether any server-side source is allowed."""
        return bool(self.roots or self.prefixes)

    def resolve(self, source: str) -> tuple[str, dict[str, str]]:
        """A client's source string -> (target, options) to open; SourceRefused says why not."""
        if not isinstance(source, str) or not source or "\x00" in source or len(source) > 4096:
            raise SourceRefused("not a usable source string")
        return self._url(source) if _URL.match(source) else self._file(source)

    def _file(self, source: str) -> tuple[str, dict[str, str]]:
        if not self.roots:
            raise SourceRefused("server-side files are off (no --source-root)")
        candidates = [source] if os.path.isabs(source) else [os.path.join(r, source) for r in self.roots]
        for cand in candidates:
            real = os.path.realpath(cand)  # every symlink resolved: a link inside a root cannot lead out of it
            if not any(os.path.commonpath([real, r]) == r for r in self.roots):
                continue
            try:
                if stat.S_ISREG(os.stat(real).st_mode):
                    return real, {"protocol_whitelist": "file", "format_whitelist": MEDIA_FORMATS}
            except OSError:
                continue
        raise SourceRefused(f"{source!r} is not a regular file under a --source-root")

    def _url(self, source: str) -> tuple[str, dict[str, str]]:
        try:
            scheme, host, port, userinfo, path = _split(source)
        except ValueError as e:
            raise SourceRefused(str(e)) from None
        segments = urllib.parse.unquote(path).split("/")
        if ".." in segments or "." in segments:
            raise SourceRefused(f"{source!r} has a dot segment in its path")
        match = next((p for p in self.prefixes if (p.scheme, p.host, p.port, p.userinfo) ==
                      (scheme, host, port, userinfo) and _path_under(path, p.path)), None)
        if match is None:
            raise SourceRefused(f"{source!r} is under no --allow-url prefix")
        if not match.literal:
            try:
                addresses = self.resolve_host(host, port)
            except OSError as e:
                raise SourceRefused(f"{host!r} does not resolve ({e})") from None
            ips = [ipaddress.ip_address(a.split("%")[0]) for a in addresses]
            inner = [str(ip) for ip in ips if not ip.is_global or ip.is_multicast or ip.is_unspecified]
            if inner or not addresses:
                raise SourceRefused(f"{host!r} resolves to a non-public address {inner}; name the address in "
                                    f"--allow-url to allow it")
        options = {"protocol_whitelist": URL_PROTOCOLS[scheme], "format_whitelist": MEDIA_FORMATS}
        if scheme in ("http", "https"):
            options["max_redirects"] = "0"  # a redirect could lead anywhere
        return source, options


def open_source(target: str, options: dict[str, str], fps: int, frame_hw: tuple[int, int], timeout: float, *,
                sampling: str = "original", resize: str = "torchvision") -> FrameStream:
    """Open a resolved file or URL with FrameStream (blocking, up to `timeout` for a URL); raises VideoError.

    Frames are picked as the checkpoint was trained (`sampling`, `resize`) and decoded near the server's frame
    size, so the pump's second resize to exactly frame_hw is cheap.
    """
    area = frame_hw[0] * frame_hw[1]
    return FrameStream(target, fps=fps, timeout=timeout, min_pixels=min(area, VIDEO_MIN_PIXELS), max_pixels=area,
                       queue_size=2, sampling=sampling, resize=resize, options=dict(options))


def preview_jpeg(frame: np.ndarray, quality: int = 70) -> bytes:
    """A uint8 [h, w, 3] frame as JPEG bytes, for the page to show what a server-side source sees."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class SourcePump:
    """A thread that reads `frames` (a FrameStream), resizes each second to frame_hw and hands it to
    `deliver` no earlier than the moment its last frame is shown in real time (origin + t0 + (fps-1)/fps,
    as a camera's would arrive), so a file plays at its own speed and a live stream is never read ahead.
    `on_end(None)` when the source ends, `on_end(exc)` when it fails. `origin` is the monotonic time of
    second 0 of the source.
    """

    def __init__(self, frames: FrameStream, frame_hw: tuple[int, int], deliver: Callable[[Second], None],
                 on_end: Callable[[BaseException | None], None], *, preview: Callable[[bytes], None] | None = None,
                 resize: str = "torchvision", clock=time.monotonic):
        self.frames, self.frame_hw, self.deliver, self.on_end = frames, frame_hw, deliver, on_end
        self.preview, self.clock, self.resize = preview, clock, resize_with(resize)
        self.origin = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="svlm-source", daemon=True)

    def start(self) -> None:
        """Start reading."""
        self.origin = self.clock()
        self._thread.start()

    def stop(self) -> None:
        """Stop reading and release the source (returns at once; the thread ends within a frame)."""
        self._stop.set()
        threading.Thread(target=self.frames.close, daemon=True).start()

    def _run(self) -> None:
        err: BaseException | None = None
        try:
            for sec in self.frames:
                frames = self.resize(sec.frames, *self.frame_hw)  # [fps, h, w, 3]
                second = make_second(sec.index, list(frames), sec.fps, partial=sec.partial,
                                     num_real=sec.num_real)
                wait = self.origin + (last_sample_time(sec) - self.frames.start) - self.clock()
                if wait > 0 and self._stop.wait(wait):
                    return
                if self._stop.is_set():
                    return
                self.deliver(second)
                if self.preview is not None:
                    self.preview(preview_jpeg(frames[-1]))
        except BaseException as e:  # noqa: BLE001 - reported to the session
            err = e
        if not self._stop.is_set():
            self.on_end(err)


class UploadRefused(Exception):
    """An upload over a quota or a limit: `status` (HTTP) and `code` go to the client with the message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


@dataclasses.dataclass
class _Upload:
    client: str
    started: float
    size: int = 0
    done_at: float | None = None  # when it was completely written (None: still being written)
    claimed: bool = False


class Uploads:
    """Uploaded videos under a private temporary directory, by random id, within quotas, until used or expired.

    An upload is reserved (`reserve`, counted against its client's and the server's count quotas), written
    chunk by chunk (`grow`, checked against the byte limits as it goes), then published (`commit`). A session
    `claim`s it once; the file is then the session's and is deleted when the session ends, whatever the
    reason (`discard`). A published upload that no session claims within `ttl_s` is deleted by `expire`.
    Used from the event loop only.
    """

    def __init__(self, *, max_bytes: int, per_client: int, client_bytes: int, max_count: int, total_bytes: int,
                 ttl_s: float, clock=time.monotonic):
        self.max_bytes, self.per_client, self.client_bytes = max_bytes, per_client, client_bytes
        self.max_count, self.total_bytes, self.ttl_s, self.clock = max_count, total_bytes, ttl_s, clock
        self.root = tempfile.mkdtemp(prefix="svlm-uploads-")
        self._files: dict[str, _Upload] = {}

    def _path(self, uid: str) -> str:
        u = self._files.get(uid)
        return os.path.join(self.root, uid + (".part" if u is not None and u.done_at is None else ""))

    def reserve(self, client: str) -> tuple[str, str]:
        """A fresh (id, path to write) for `client`; UploadRefused (429) when a count quota is full."""
        self.expire()
        mine = sum(u.client == client for u in self._files.values())
        if mine >= self.per_client:
            raise UploadRefused(429, "upload_quota", f"This client already holds {mine} uploads, the most allowed; "
                                                     f"start a session on one or wait until it expires.")
        if len(self._files) >= self.max_count:
            raise UploadRefused(429, "upload_quota", f"The server holds {len(self._files)} uploads, the most "
                                                     f"allowed; try again later.")
        uid = secrets.token_hex(16)
        self._files[uid] = _Upload(client, self.clock())
        return uid, self._path(uid)

    def grow(self, uid: str, n: int) -> None:
        """Count n more bytes of upload `uid`; UploadRefused (413) past the file, client or server byte limit."""
        u = self._files[uid]
        u.size += n
        if u.size > self.max_bytes:
            raise UploadRefused(413, "too_large", f"The upload exceeds the limit of {self.max_bytes} bytes.")
        if sum(x.size for x in self._files.values() if x.client == u.client) > self.client_bytes:
            raise UploadRefused(413, "upload_quota", f"This client's uploads exceed their quota of "
                                                     f"{self.client_bytes} bytes; use or wait out the others.")
        if sum(x.size for x in self._files.values()) > self.total_bytes:
            raise UploadRefused(413, "upload_quota", "The server's uploads are at their quota; try again later.")

    def commit(self, uid: str) -> None:
        """Publish a completely written upload under its id."""
        part = self._path(uid)
        self._files[uid].done_at = self.clock()
        os.replace(part, self._path(uid))

    def claim(self, uid: str) -> str | None:
        """The file of published, unclaimed upload `uid`, now the caller's to `discard`; None if there is none."""
        u = self._files.get(uid) if isinstance(uid, str) else None
        if u is None or u.done_at is None or u.claimed:
            return None
        u.claimed = True
        return self._path(uid)

    def discard(self, uid: str) -> None:
        """Delete upload `uid` (written, partial or claimed) and forget it; nothing if there is none."""
        if uid not in self._files:
            return
        path = self._path(uid)
        del self._files[uid]
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def expire(self) -> int:
        """Delete the published uploads that no session claimed within ttl_s -> how many."""
        now = self.clock()
        old = [uid for uid, u in self._files.items()
               if u.done_at is not None and not u.claimed and now - u.done_at > self.ttl_s]
        for uid in old:
            self.discard(uid)
        return len(old)

    @property
    def count(self) -> int:
        """Uploads held (being written, published or claimed)."""
        return len(self._files)

    def cleanup(self) -> None:
        """Delete every upload."""
        self._files.clear()
        shutil.rmtree(self.root, ignore_errors=True)
