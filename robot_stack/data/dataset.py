"""Native episode storage: one zarr v3 group per episode, every sample at its capture stamp.

Layout of ``<root>/episode_000007.zarr`` (group attrs hold the metadata: config, calibration, task
text, robot model, rates, start date, status):

    <stream>/stamp_ns      (N,) int64, capture (or send) time on the stack clock, ns
    <stream>/<field>       (N, ...) one row per sample

Streams: ``robot_state`` (q, dq, ee_pose, gripper_width at servo rate), ``camera/<id>`` (color
(H, W, 3) uint8, depth (H, W) uint16 mm, the device's frame counter ``frame_index`` and, from
format version 2, the device's own capture stamp ``device_stamp_ns`` (0 without a device clock);
``stamp_ns`` is the capture time on the host clock), ``teleop`` (value, gripper), ``action`` (the
waypoints sent to the arm: target stamp, pose, gripper, origin code), ``event`` (interventions).

Versions: ``robot_stack.episode/2`` adds ``camera/<id>/device_stamp_ns``; version 1 episodes
stay readable (:meth:`Episode.device_stamps` gives zeros for them).

Crash safety: an episode is written into ``episode_N.zarr.partial`` and renamed to its final name
(atomic on POSIX) only when it is complete, so a finished episode is never touched again. Rows are
appended in blocks; zarr's local store writes every chunk and metadata file through a temporary
file and an atomic rename, so after a kill the arrays are readable up to their last completed
append. Within a stream the data fields are appended before ``stamp_ns``; :func:`recover` trims a
stream to the rows every field holds. :func:`find_interrupted` lists ``.partial`` episodes for the
recorder to recover or discard on its next start.

Compression: Blosc (lz4 for color, zstd + bit shuffle for depth and low-dim streams), lossless;
``bench/record.py`` measures its write cost and disk use against H.264 (PyAV).
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import datetime
import errno
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "robot_stack.episode/2"
#: formats this version reads (an older one lacks only what the newer added)
READABLE = ("robot_stack.episode/1", FORMAT)
PARTIAL = ".partial"
_NAME = re.compile(r"^episode_(\d{6})\.zarr(\.partial)?$")
ORIGINS = ("policy", "teleop", "replay", "cli")  # action origin codes


class DatasetError(RobotStackError, RuntimeError):
    """An episode folder cannot be read or written (missing, malformed, disk full)."""


def episode_name(index: int) -> str:
    return f"episode_{index:06d}.zarr"


def next_index(root: Path) -> int:
    """The next free episode index in ``root`` (finished, partial and discarded ones count)."""
    idx = [-1]
    for d in (root, root / "discarded"):
        if d.is_dir():
            idx += [int(m.group(1)) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return max(idx) + 1


def _compressor(field: str, dtype: np.dtype):
    from zarr.codecs import BloscCodec

    if field == "color":
        return BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")
    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle" if dtype.itemsize > 1 else "shuffle")


class EpisodeWriter:
    """Appends samples of one episode; call :meth:`flush` periodically and :meth:`close` at the end.

    Args:
        root: dataset folder (created).
        index: episode index; None = :func:`next_index`.
        meta: JSON-serializable metadata stored in the group attrs.
        rows_per_chunk: stream -> rows per zarr chunk (default 64; cameras 30, robot state 500).

    Raises:
        DatasetError: the folder cannot be written (the message names the cause, e.g. disk full).
    """

    def __init__(
        self,
        root: str | Path,
        index: int | None = None,
        meta: dict | None = None,
        rows_per_chunk: dict[str, int] | None = None,
    ):
        import zarr

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index = next_index(self.root) if index is None else index
        self.final = self.root / episode_name(self.index)
        self.path = self.final.with_name(self.final.name + PARTIAL)
        if self.final.exists() or self.path.exists():
            raise DatasetError(f"{self.final} already exists")
        self.rows_per_chunk = rows_per_chunk or {}
        self._buf: dict[str, list[dict[str, np.ndarray]]] = {}
        self._arrays: dict[str, dict] = {}
        self.rows: dict[str, int] = {}
        attrs = {
            "format": FORMAT,
            "status": "recording",
            "index": self.index,
            "start_date": datetime.datetime.now().astimezone().isoformat(),
            **(meta or {}),
        }
        try:
            self.group = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
            self.group.attrs.update(_jsonable(attrs))
        except OSError as e:
            raise _io_error(e, self.path) from e

    def add(self, stream: str, stamp_ns: int, **fields) -> None:
        """Buffer one sample of ``stream`` (arrays or scalars; the same fields every time)."""
        row = {k: np.asarray(v) for k, v in fields.items()}
        row["stamp_ns"] = np.asarray(stamp_ns, np.int64)
        self._buf.setdefault(stream, []).append(row)

    def _chunk_rows(self, stream: str) -> int:
        if stream in self.rows_per_chunk:
            return self.rows_per_chunk[stream]
        return 30 if stream.startswith("camera/") else 500 if stream == "robot_state" else 64

    def flush(self) -> int:
        """Append every buffered sample; returns the number of rows written.

        Raises:
            DatasetError: a write failed (disk full, permissions); what was flushed before stays
                readable.
        """
        n = 0
        for stream, rows in list(self._buf.items()):
            if not rows:
                continue
            self._buf[stream] = []
            try:
                self._append(stream, rows)
            except OSError as e:
                raise _io_error(e, self.path) from e
            n += len(rows)
        return n

    def _append(self, stream: str, rows: list[dict[str, np.ndarray]]) -> None:
        fields = [k for k in rows[0] if k != "stamp_ns"] + ["stamp_ns"]  # stamps last (see recover)
        arrays = self._arrays.get(stream)
        if arrays is None:
            arrays = self._arrays[stream] = {}
            g = self.group.require_group(stream)
            for k in fields:
                a0 = rows[0][k]
                arrays[k] = g.create_array(
                    k,
                    shape=(0, *a0.shape),
                    dtype=a0.dtype,
                    chunks=(self._chunk_rows(stream), *a0.shape),
                    compressors=[_compressor(k, a0.dtype)],
                )
        for k in fields:
            try:
                block = np.stack([r[k] for r in rows])
            except (KeyError, ValueError) as e:
                raise DatasetError(f"stream {stream!r}: field {k!r} changed shape or is missing ({e})") from e
            arr = arrays[k]
            if block.shape[1:] != arr.shape[1:]:
                raise DatasetError(f"stream {stream!r}: field {k!r} shape {block.shape[1:]} != {arr.shape[1:]}")
            arr.append(block.astype(arr.dtype, copy=False))
        self.rows[stream] = self.rows.get(stream, 0) + len(rows)

    def close(self, extra_meta: dict | None = None) -> Path:
        """Flush, mark complete and atomically move to the final name; returns the episode path."""
        self.flush()
        self.group.attrs.update(
            _jsonable(
                {
                    "status": "complete",
                    "rows": self.rows,
                    "end_date": datetime.datetime.now().astimezone().isoformat(),
                    **(extra_meta or {}),
                }
            )
        )
        self.path.rename(self.final)
        return self.final

    def discard(self) -> Path:
        """Move the episode to ``<root>/discarded/`` (kept for inspection, never loaded)."""
        self._buf.clear()
        dst = self.root / "discarded" / self.final.name
        dst.parent.mkdir(exist_ok=True)
        self.path.rename(dst)
        return dst


def _io_error(e: OSError, path: Path) -> DatasetError:
    if e.errno == errno.ENOSPC:
        return DatasetError(f"disk full while writing {path}: recording stopped; earlier episodes are intact")
    return DatasetError(f"cannot write {path}: {e}")


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))


@dataclass
class Episode:
    """A stored episode, read lazily.

    Attributes:
        path: the episode folder.
        meta: the group attrs (config, task, rates, status, ...).
    """

    path: Path
    meta: dict

    @property
    def _group(self):
        import zarr

        return zarr.open_group(str(self.path), mode="r")

    def streams(self) -> list[str]:
        """Stream names, e.g. ["action", "camera/scene", "robot_state"]."""
        return sorted(_stream_groups(self._group))

    def array(self, stream: str, field: str):
        """The zarr array ``stream/field`` (index it to read: ``ep.array("camera/scene", "color")[i]``)."""
        try:
            return self._group[f"{stream}/{field}"]
        except KeyError as e:
            raise DatasetError(f"{self.path}: no {stream}/{field} (streams: {self.streams()})") from e

    def load(self, stream: str) -> dict[str, np.ndarray]:
        """Every field of ``stream`` as numpy arrays (whole stream in memory)."""
        g = self._group
        if stream not in g:
            raise DatasetError(f"{self.path}: no stream {stream!r} (streams: {self.streams()})")
        return {k: a[:] for k, a in g[stream].arrays()}

    def device_stamps(self, camera: str) -> np.ndarray:
        """(N,) int64 device capture stamps of ``camera/<camera>``'s frames, ns (zeros where the
        camera has no device clock, and for a format version 1 episode, which did not store them)."""
        g = self._group
        if f"camera/{camera}/device_stamp_ns" in g:
            return g[f"camera/{camera}/device_stamp_ns"][:]
        return np.zeros(self.array(f"camera/{camera}", "stamp_ns").shape[0], np.int64)

    def __len__(self) -> int:
        """Robot states recorded (of the first arm, in an episode of several)."""
        first = episode_arms(self)[0]
        return int(self.array(f"robot_state/{first}" if first else "robot_state", "stamp_ns").shape[0])


def episode_arms(ep) -> list[str]:
    """The arm nodes of an episode in action order: [""] for a one-arm episode (stream
    ``robot_state``), else its ``robots`` metadata's order (streams ``robot_state/<arm>``).

    Raises:
        DatasetError: several arm streams and no order for them in the metadata.
    """
    streams = ep.streams()
    if "robot_state" in streams:
        return [""]
    order = [r.get("arm_node") for r in ep.meta.get("robots") or []]
    if not order or any(f"robot_state/{a}" not in streams for a in order):
        raise DatasetError(
            f"{ep.path}: no robot_state stream, and no arm order in its metadata (robots) for "
            f"{[s for s in streams if s.startswith('robot_state/')]}"
        )
    return order


def open_episode(path: str | Path) -> Episode:
    """Open a finished episode.

    Raises:
        DatasetError: not an episode folder, or an unfinished (``.partial``) one.
    """
    import zarr

    path = Path(path)
    if path.name.endswith(PARTIAL):
        raise DatasetError(
            f"{path} was interrupted while recording: recover or discard it first (the recorder does this on start)"
        )
    try:
        meta = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as e:  # noqa: BLE001 - zarr raises several types for a missing/broken store
        raise DatasetError(f"{path} is not a readable episode: {e}") from e
    if meta.get("format") not in READABLE:
        raise DatasetError(f"{path}: format {meta.get('format')!r}, expected one of {READABLE}")
    return Episode(path, meta)


def list_episodes(root: str | Path) -> list[Path]:
    """Finished episodes in ``root``, by index."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"no dataset folder {root}")
    return sorted(p for p in root.iterdir() if (m := _NAME.match(p.name)) and not m.group(2))


def find_interrupted(root: str | Path) -> list[Path]:
    """``.partial`` episodes left by a crash or kill."""
    root = Path(root)
    return sorted(p for p in root.iterdir() if (m := _NAME.match(p.name)) and m.group(2)) if root.is_dir() else []


def recover(path: str | Path, min_rows: int = 1) -> Path | None:
    """Make an interrupted episode loadable up to its last complete sample, or discard it.

    Each stream is trimmed to the rows all of its fields hold, and then to the rows whose stamps
    were really written (an append grows an array's shape before its chunk lands, so a kill in
    between leaves rows that read as the fill value 0, which no monotonic-clock stamp is); the
    episode is marked
    ``status: recovered`` and renamed to its final name. If it holds no robot state rows (fewer
    than ``min_rows``) or cannot be read, it is moved to ``discarded/`` and None is returned.
    """
    import zarr

    path = Path(path)
    final = path.with_name(path.name[: -len(PARTIAL)])
    for stray in path.rglob(f"*{PARTIAL}"):  # temporary files of an interrupted atomic write
        if stray.is_file():
            stray.unlink()
    try:
        g = zarr.open_group(str(path), mode="r+")
        rows = {}
        for stream in _stream_groups(g):
            sub = g[stream]
            n = min(a.shape[0] for _, a in sub.arrays())
            n = _written_rows(sub["stamp_ns"], n)
            for _, a in sub.arrays():
                if a.shape[0] > n:
                    a.resize((n, *a.shape[1:]))
            rows[stream] = n
        if rows.get("robot_state", 0) < min_rows:
            raise DatasetError("no robot state was saved")
        g.attrs.update({"status": "recovered", "rows": rows})
    except Exception as e:  # noqa: BLE001 - anything unreadable is discarded, with the reason
        discard_interrupted(path, f"could not be recovered ({e})")
        return None
    path.rename(final)
    log.warning("interrupted episode %s recovered up to its last complete sample: %s", final.name, rows)
    return final


def _written_rows(stamps, n: int) -> int:
    """Rows ``0..k-1`` of ``stamps`` (first ``n``) that hold real stamps: > 0 and not decreasing."""
    if n == 0:
        return 0
    s = np.asarray(stamps[:n])
    ok = s > 0
    ok[1:] &= np.diff(s) >= 0
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if len(bad) else n


def discard_interrupted(path: str | Path, reason: str) -> Path:
    """Move an interrupted (``.partial``) episode to ``discarded/`` (kept for inspection), logging why."""
    path = Path(path)
    dst = path.parent / "discarded" / path.name[: -len(PARTIAL)]
    dst.parent.mkdir(exist_ok=True)
    shutil.move(str(path), dst)
    log.warning("interrupted episode %s %s: moved to %s", path.name, reason, dst)
    return dst


def _stream_groups(g) -> list[str]:
    out = []
    for name, sub in g.groups():
        if "stamp_ns" in sub:
            out.append(name)
        out += [f"{name}/{n}" for n, s in sub.groups() if "stamp_ns" in s]
    return out
