"""LeRobot dataset export (v3.0) and import (v2.1 and v3.0).

Export (``robot-stack export --format lerobot``): each native episode is resampled onto a uniform
grid at ``fps`` (LeRobot stores one row per frame): ``observation.state`` = [ee_pose(7),
gripper_width] interpolated at the grid times (linear, slerp), ``action`` = the executed action
stream [ee_pose(7), gripper] at the grid times, and per camera the frame nearest each grid time as
``observation.images.<camera>`` video (H.264 yuv420p through PyAV), with that frame's host capture
stamp, device stamp and device counter in the int64 columns ``camera.<camera>.stamp_ns``,
``.device_stamp_ns`` and ``.frame_counter``. Layout as LeRobot v3.0 writes
it: ``data/chunk-000/file-000.parquet`` (all episodes), ``videos/<key>/chunk-000/file-000.mp4``
(episodes concatenated; per-episode from/to timestamps in the episode table),
``meta/info.json``, ``meta/stats.json``, ``meta/tasks.parquet`` and
``meta/episodes/chunk-000/file-000.parquet`` (lengths, index ranges, video offsets, per-episode
stats). Source of the layout: the LeRobot v3.0 dataset format (huggingface/lerobot,
``CODEBASE_VERSION = "v3.0"``; blog post "LeRobotDataset v3.0").

Import (``robot-stack import``): every episode of a v2.1 (one parquet and one video per episode)
or v3.0 dataset becomes a native episode: ``robot_state`` (field ``q`` = observation.state),
``action`` (``target_ns`` = frame time, ``value`` = action), ``camera/<key>`` (decoded frames,
``color``), stamps = timestamp in ns; the task, fps, robot type and feature names go to the
metadata. Videos are decoded with PyAV (AV1, H.264, ...).
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import json
from pathlib import Path

import numpy as np

VERSION = "v3.0"
CHUNK = 1000
GOP = 2  # video keyframe interval, frames


class LeRobotError(RobotStackError, ValueError):
    """A LeRobot dataset cannot be read or written (the message names the file and problem)."""


# ------------------------------------------------------------------------------------------ export
def _grid(ep, fps: float, stream: str = "robot_state") -> np.ndarray:
    st = ep.array(stream, "stamp_ns")[:]
    n = int((st[-1] - st[0]) * fps / 1e9) + 1
    return st[0] + (np.arange(n) * 1e9 / fps).astype(np.int64)


#: quantiles LeRobot keeps beside min/max/mean/std (pi0.5-style normalization uses q01/q99)
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def _stats(x: np.ndarray) -> dict:
    """Per-dimension statistics of one episode's (n, d) values as LeRobot computes them: quantile
    q is the smallest value whose empirical CDF reaches q (``inverted_cdf``; LeRobot reads it off
    a 5000-bin histogram, so the two agree within a bin)."""
    x = np.asarray(x, np.float64)
    out = {
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "count": [int(len(x))],
    }
    out.update({k: np.quantile(x, q, axis=0, method="inverted_cdf").tolist() for k, q in QUANTILES.items()})
    return out


def _aggregate(per_episode: list[dict]) -> dict:
    """Dataset statistics from per-episode ones, the way LeRobot aggregates them for
    ``stats.json``: min/max over episodes, count-weighted mean, the parallel-variance std, and
    quantiles as the count-weighted mean of the episodes' quantiles."""
    n = np.array([s["count"][0] for s in per_episode], np.float64)
    arr = lambda k: np.array([s[k] for s in per_episode], np.float64)  # noqa: E731
    w = n.reshape(-1, *([1] * (arr("mean").ndim - 1)))
    mean = (arr("mean") * w).sum(0) / n.sum()
    var = ((arr("std") ** 2 + (arr("mean") - mean) ** 2) * w).sum(0) / n.sum()
    out = {
        "min": arr("min").min(0).tolist(),
        "max": arr("max").max(0).tolist(),
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "count": [int(n.sum())],
    }
    out.update({k: ((arr(k) * w).sum(0) / n.sum()).tolist() for k in QUANTILES})
    return out


def _image_stats(frames: np.ndarray) -> dict:
    """Per-channel statistics, shape (3, 1, 1), of (n, h, w, 3) uint8 frames scaled to [0, 1]
    (a subsample of at most about 100 frames, as LeRobot samples them)."""
    x = frames[:: max(1, len(frames) // 100)].astype(np.float64) / 255.0
    per = lambda f, **kw: f(x, axis=(0, 1, 2), **kw).reshape(3, 1, 1).tolist()  # noqa: E731
    out = {
        "min": per(np.min),
        "max": per(np.max),
        "mean": per(np.mean),
        "std": per(np.std),
        "count": [int(len(frames))],
    }
    flat = x.reshape(-1, 3)
    out.update(
        {k: np.quantile(flat, q, axis=0, method="inverted_cdf").reshape(3, 1, 1).tolist() for k, q in QUANTILES.items()}
    )
    return out


def _tasks_table(tasks: list[str]):
    """``meta/tasks.parquet`` as LeRobot v3.0 writes it with pandas: ``task_index`` with the task
    string as the DataFrame index (LeRobot looks tasks up by that index), written here with
    pyarrow and pandas' schema metadata so pandas restores the index."""
    import pyarrow as pa

    meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    t = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    return t.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})


def episode_arms(ep) -> list[str]:
    """:func:`robot_stack.data.dataset.episode_arms`, its error as a :class:`LeRobotError`."""
    from robot_stack.data.dataset import DatasetError, episode_arms as arms

    try:
        return arms(ep)
    except DatasetError as e:
        raise LeRobotError(str(e)) from None


def arm_names(arms: list[str], names: list[str]) -> list[str]:  # (control.features.feature_names)
    """Per-arm feature names: ``names`` as they are for one arm, else ``<arm>_<name>`` per arm in
    order, the arm node's name without a leading ``arm_`` (``arm_left`` -> ``left_x``)."""
    if arms == [""]:
        return list(names)
    return [f"{a.removeprefix('arm_')}_{n}" for a in arms for n in names]


def export_lerobot(
    episodes: list[Path],
    out: str | Path,
    fps: float = 10.0,
    cameras: list[str] | None = None,
    robot_type: str = "franka_panda_sim",
) -> Path:
    """Write ``episodes`` as a LeRobot v3.0 dataset in ``out`` (must not exist); returns ``out``.

    ``observation.state`` and ``action`` are 8 values per arm ([x y z qx qy qz qw gripper], each
    arm's base frame). Episodes of several arms (streams ``robot_state/<arm node>``, in the order
    of their ``robots`` metadata) concatenate the arms in that order and name every value by its
    arm, as LeRobot's bimanual datasets do (``left_x ... right_gripper_open``): the arm node's name
    with a leading ``arm_`` dropped.

    Raises:
        LeRobotError: ``out`` exists, no episodes, or an episode lacks a needed stream.
    """
    import av
    import pyarrow as pa
    import pyarrow.parquet as pq

    from robot_stack.data.dataset import open_episode
    from robot_stack.control.features import state_vector
    from robot_stack.control.observation import interpolate_states
    from robot_stack.control.features import actions_at

    out = Path(out)
    if float(fps) != int(fps) or fps <= 0:
        raise LeRobotError(
            f"fps {fps}: LeRobot datasets have a whole-number frame rate (the video is encoded "
            f"and decoded at it); choose e.g. {max(1, round(fps))}"
        )
    fps = int(fps)
    if out.exists():
        raise LeRobotError(f"{out} exists; export writes a new dataset folder")
    if not episodes:
        raise LeRobotError("no episodes to export")
    eps = [open_episode(p) for p in episodes]
    arms = episode_arms(eps[0])
    for ep in eps[1:]:
        if episode_arms(ep) != arms:
            raise LeRobotError(
                f"{ep.path}: arms {episode_arms(ep)}, the first episode's {arms}: one dataset, one layout"
            )
    dim = 8 * len(arms)
    cams = cameras or sorted(s.split("/", 1)[1] for s in eps[0].streams() if s.startswith("camera/"))
    keys = {c: f"observation.images.{c}" for c in cams}
    tasks = sorted({e.meta.get("task", "") for e in eps})
    rows: dict[str, list] = {
        k: []
        for k in ("observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index")
    }
    ep_rows = []
    writers, streams, vt = {}, {}, {c: 0.0 for c in cams}
    (out / "data" / "chunk-000").mkdir(parents=True)
    (out / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    shapes = {}
    ep_stats: dict[str, list[dict]] = {}  # feature -> per-episode statistics
    try:
        index = 0
        for e_i, ep in enumerate(eps):
            sfx = [f"/{a}" if a else "" for a in arms]
            for s in [f"robot_state{x}" for x in sfx] + [f"action{x}" for x in sfx] + [f"camera/{c}" for c in cams]:
                if s not in ep.streams():
                    raise LeRobotError(f"{ep.path}: no {s} stream")
            grid = _grid(ep, fps, f"robot_state{sfx[0]}")
            states, actions = [], []
            for x in sfx:
                rs, act = ep.load(f"robot_state{x}"), ep.load(f"action{x}")
                _, ee, g = interpolate_states(
                    rs["stamp_ns"],
                    rs["q"],
                    rs["ee_pose"],
                    rs["gripper_width"],
                    grid,
                    max_extrapolation_ns=int(1e9 / fps),
                )
                states.append(state_vector(ee, g))
                actions.append(actions_at(act["target_ns"], act["pose"], act["gripper"], grid).astype(np.float32))
            state, action = np.concatenate(states, axis=1), np.concatenate(actions, axis=1)
            n = len(grid)
            rec = {
                "episode_index": e_i,
                "tasks": [ep.meta.get("task", "")],
                "length": n,
                "data/chunk_index": 0,
                "data/file_index": 0,
                "dataset_from_index": index,
                "dataset_to_index": index + n,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            }
            for c in cams:
                cst = ep.array(f"camera/{c}", "stamp_ns")[:]
                idx = np.abs(cst[None, :] - grid[:, None]).argmin(1)
                # each row's frame: its host capture stamp, device stamp and device counter
                rows.setdefault(f"camera.{c}.stamp_ns", []).extend(cst[idx].tolist())
                rows.setdefault(f"camera.{c}.device_stamp_ns", []).extend(ep.device_stamps(c)[idx].tolist())
                counter = ep.array(f"camera/{c}", "frame_index")[:]
                rows.setdefault(f"camera.{c}.frame_counter", []).extend(counter[idx].tolist())
                color = ep.array(f"camera/{c}", "color")
                frames = np.stack([color[int(i)] for i in idx])
                h, w = frames.shape[1:3]
                if c not in writers:
                    path = out / "videos" / keys[c] / "chunk-000" / "file-000.mp4"
                    path.parent.mkdir(parents=True)
                    writers[c] = av.open(str(path), "w")
                    st = writers[c].add_stream("libx264", rate=fps)
                    st.width, st.height, st.pix_fmt = w, h, "yuv420p"
                    # a keyframe every GOP frames: random access decodes at most that many (LeRobot's
                    # encoder uses g=2); one group for the whole file would decode from its start
                    st.options = {"crf": "18", "preset": "fast", "g": str(GOP)}
                    streams[c], shapes[c] = st, (h, w)
                elif shapes[c] != (h, w):
                    raise LeRobotError(
                        f"{ep.path}: camera {c} is {w}x{h}, earlier episodes {shapes[c][1]}x{shapes[c][0]}"
                    )
                for f in frames:
                    for pkt in streams[c].encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                        writers[c].mux(pkt)
                ep_stats.setdefault(keys[c], []).append(_image_stats(frames))
                for k, v in ep_stats[keys[c]][-1].items():
                    rec[f"stats/{keys[c]}/{k}"] = v
                rec.update(
                    {
                        f"videos/{keys[c]}/chunk_index": 0,
                        f"videos/{keys[c]}/file_index": 0,
                        f"videos/{keys[c]}/from_timestamp": vt[c],
                        f"videos/{keys[c]}/to_timestamp": vt[c] + n / fps,
                    }
                )
                vt[c] += n / fps
            for name, x in (("observation.state", state), ("action", action)):
                ep_stats.setdefault(name, []).append(_stats(x))
                for k, v in ep_stats[name][-1].items():
                    rec[f"stats/{name}/{k}"] = v
            ep_rows.append(rec)
            rows["observation.state"] += list(state)
            rows["action"] += list(action)
            rows["timestamp"] += list((np.arange(n) / fps).astype(np.float32))
            rows["frame_index"] += list(range(n))
            rows["episode_index"] += [e_i] * n
            rows["index"] += list(range(index, index + n))
            rows["task_index"] += [tasks.index(ep.meta.get("task", ""))] * n
            index += n
    finally:
        for c, wtr in writers.items():
            for pkt in streams[c].encode():
                wtr.mux(pkt)
            wtr.close()
    vec = lambda a: pa.array([np.asarray(r, np.float32) for r in a], type=pa.list_(pa.float32(), dim))  # noqa: E731
    table = pa.table(
        {
            "observation.state": vec(rows["observation.state"]),
            "action": vec(rows["action"]),
            "timestamp": pa.array(rows["timestamp"], pa.float32()),
            **{k: pa.array(rows[k], pa.int64()) for k in ("frame_index", "episode_index", "index", "task_index")},
            **{k: pa.array(rows[k], pa.int64()) for k in _stamp_columns(cams)},
        }
    )
    pq.write_table(table, out / "data" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.Table.from_pylist(ep_rows), out / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(_tasks_table(tasks), out / "meta" / "tasks.parquet")
    names = ["x", "y", "z", "qx", "qy", "qz", "qw"]
    features = {
        "observation.state": {"dtype": "float32", "shape": [dim], "names": arm_names(arms, names + ["gripper_width"])},
        "action": {"dtype": "float32", "shape": [dim], "names": arm_names(arms, names + ["gripper_open"])},
        **{
            keys[c]: {
                "dtype": "video",
                "shape": [*shapes[c], 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.fps": fps,
                    "video.height": shapes[c][0],
                    "video.width": shapes[c][1],
                    "video.codec": "h264",
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
            for c in cams
        },
        **{
            k: {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}
            for k in ("timestamp", "frame_index", "episode_index", "index", "task_index", *_stamp_columns(cams))
        },
    }
    info = {
        "codebase_version": VERSION,
        "robot_type": robot_type,
        "total_episodes": len(eps),
        "total_frames": index,
        "total_tasks": len(tasks),
        "chunks_size": CHUNK,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": f"0:{len(eps)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features,
    }
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    stats = {k: _aggregate(v) for k, v in ep_stats.items()}
    (out / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
    return out


def _stamp_columns(cams: list[str]) -> list[str]:
    """The extra int64 columns of each camera's frame per row: host capture stamp (ns), device
    capture stamp (ns, 0 without a device clock) and device frame counter. Named outside
    ``observation.*``, which LeRobot's policies take as inputs."""
    return [f"camera.{c}.{k}" for c in cams for k in ("stamp_ns", "device_stamp_ns", "frame_counter")]


# ------------------------------------------------------------------------------------------ import
def _decode(path: Path, start_s: float = 0.0, n: int | None = None, fps: float = 30.0) -> np.ndarray:
    """RGB frames (n, h, w, 3) uint8 of ``path`` from ``start_s`` (frame-exact by presentation time)."""
    import av

    if not path.is_file():
        raise LeRobotError(f"missing video {path}")
    out = []
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        for f in c.decode(st):
            t = float(f.pts * st.time_base) if f.pts is not None else len(out) / fps
            if t < start_s - 0.5 / fps:
                continue
            out.append(f.to_ndarray(format="rgb24"))
            if n is not None and len(out) >= n:
                break
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def _read_lerobot_index(root: Path):
    """(info, version, fps, [(episode_index, table, {video key: (path, from_s)}, task)]) of a dataset."""
    import pyarrow.parquet as pq

    try:
        info = json.loads((root / "meta" / "info.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LeRobotError(f"{root}/meta/info.json: {e}") from e
    ver, fps = info.get("codebase_version"), float(info["fps"])
    vkeys = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    episodes = []  # (episode_index, table, {key: (video path, from_s)}, task)
    if ver == "v2.1":
        tasks = {}
        for line in (root / "meta" / "tasks.jsonl").read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                tasks[d["task_index"]] = d["task"]
        for p in sorted((root / "data").glob("chunk-*/episode_*.parquet")):
            t = pq.read_table(p)
            e_i = int(t.column("episode_index")[0].as_py())
            chunk = e_i // int(info.get("chunks_size", CHUNK))
            vids = {
                k: (root / info["video_path"].format(episode_chunk=chunk, video_key=k, episode_index=e_i), 0.0)
                for k in vkeys
            }
            episodes.append((e_i, t, vids, tasks.get(int(t.column("task_index")[0].as_py()), "")))
    elif ver == "v3.0":
        tt = pq.read_table(root / "meta" / "tasks.parquet").to_pydict()
        # the task string is the pandas index: a column "task" (named index, ours) or
        # "__index_level_0__" (LeRobot's own, unnamed)
        col = next((c for c in ("task", "__index_level_0__") if c in tt), None)
        tasks = dict(zip(tt["task_index"], tt[col])) if col else {}
        eps_t = pq.read_table(sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))[0]).to_pylist()
        data = {}
        for r in eps_t:
            dp = root / info["data_path"].format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
            if dp not in data:
                data[dp] = pq.read_table(dp)
            t = data[dp]
            sel = np.nonzero(np.asarray(t.column("episode_index")) == r["episode_index"])[0]
            vids = {
                k: (
                    root
                    / info["video_path"].format(
                        video_key=k, chunk_index=r[f"videos/{k}/chunk_index"], file_index=r[f"videos/{k}/file_index"]
                    ),
                    float(r[f"videos/{k}/from_timestamp"]),
                )
                for k in vkeys
            }
            episodes.append((r["episode_index"], t.take(sel), vids, (r.get("tasks") or [""])[0]))
    else:
        raise LeRobotError(f"{root}: codebase_version {ver!r} (supported: v2.1, v3.0)")
    return info, ver, fps, episodes


def _not_lerobot(root: Path) -> str:
    """Why ``root`` is not importable, naming the format when it is a known other one."""
    if any(root.glob("**/*.tfrecord*")) or (root / "dataset_info.json").is_file():
        return (
            f"{root} is an RLDS / Open X-Embodiment (TFDS TFRecord) dataset; robot-stack import reads "
            f"LeRobot v2.1 and v3.0 datasets (convert RLDS to LeRobot first)"
        )
    return f"{root} is not a LeRobot dataset (no meta/info.json); robot-stack import reads LeRobot v2.1 and v3.0"


def name_groups(names) -> dict[str, list[int]]:
    """Per-arm (and per-hand) groups of a state or action vector from its value names, as
    LeRobot's bimanual datasets name them (``left_x``, ``kRightWristYaw``, ``kLeftHandIndex``):
    group ``<side>_<part>`` -> the value indices, side ``left``/``right`` (or none), part ``hand``,
    ``gripper`` or ``arm``. ``names`` may be a flat list or LeRobot's one-element list of lists;
    None gives no groups."""
    if not names:
        return {}
    flat = names[0] if len(names) == 1 and isinstance(names[0], list) else names
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(flat):
        low = str(n).lower()
        side = "left" if "left" in low else "right" if "right" in low else ""
        part = "hand" if "hand" in low else "gripper" if "gripper" in low else "arm"
        groups.setdefault(f"{side}_{part}" if side else part, []).append(i)
    return groups


def import_lerobot(root: str | Path, out: str | Path, require_videos: bool = False, log=None) -> list[Path]:
    """Convert every episode present in a LeRobot v2.1 or v3.0 dataset into native episodes in ``out``.

    A video file that is missing (a dataset downloaded without its videos) is skipped: the
    episode keeps its tabular streams, its metadata lists ``skipped_videos``, and ``log`` (a
    callable taking one line) names each; ``require_videos`` refuses instead.

    Raises:
        LeRobotError: not a LeRobot dataset (RLDS/TFRecord named as such), unknown version,
            unreadable files, a missing video with ``require_videos``, or a video/row count
            mismatch. The episode being imported is removed; those before it stay.
    """
    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise LeRobotError(_not_lerobot(root))
    try:
        info, ver, fps, episodes = _read_lerobot_index(root)
    except LeRobotError:
        raise
    except Exception as e:  # a malformed dataset: say what and where, in one line
        raise LeRobotError(f"{root}: unreadable LeRobot dataset ({type(e).__name__}: {e})") from e
    from robot_stack.data.dataset import EpisodeWriter

    out_paths = []
    for e_i, t, vids, task in episodes:
        w = None
        try:
            w = EpisodeWriter(
                out,
                meta={
                    "task": task,
                    "source": f"lerobot {ver}",
                    "source_path": str(root),
                    "source_episode_index": int(e_i),
                    "robot": {"type": info.get("robot_type")},
                    "rates_hz": {"dataset": fps},
                    "features": {k: info["features"][k].get("names") for k in ("observation.state", "action")},
                    "layout": {
                        k: name_groups(info["features"][k].get("names")) for k in ("observation.state", "action")
                    },
                },
            )
            missing = {k: p for k, (p, _) in vids.items() if not Path(p).is_file()}
            if missing and require_videos:
                raise LeRobotError(
                    f"{next(iter(missing.values()))}: video of episode {e_i} is missing "
                    f"({len(missing)} of {len(vids)} videos; import without --require-videos "
                    f"keeps the tabular streams)"
                )
            if missing and log is not None:
                for k, p in missing.items():
                    log(f"episode {e_i}: video {k} missing ({p}), imported without it")
            _import_episode(w, fps, e_i, t, {k: v for k, v in vids.items() if k not in missing})
            out_paths.append(w.close({"skipped_videos": sorted(missing)} if missing else None))
        except Exception as e:
            if w is not None:  # nothing in a half-imported episode is worth keeping: no partial left behind
                import shutil

                shutil.rmtree(w.path, ignore_errors=True)
            done = f" ({len(out_paths)} episodes imported before it are kept)" if out_paths else ""
            if isinstance(e, LeRobotError):
                raise LeRobotError(f"{e}{done}") from e
            raise LeRobotError(f"{root}: episode {e_i} could not be imported ({type(e).__name__}: {e}){done}") from e
    return out_paths


def _import_episode(w, fps: float, e_i: int, t, vids: dict) -> None:
    """Fill writer ``w`` with one LeRobot episode (table ``t``, videos ``vids``)."""
    ts = np.asarray(t.column("timestamp"), np.float64)
    stamps = np.round(ts * 1e9).astype(np.int64)
    state = np.stack(t.column("observation.state").to_numpy(zero_copy_only=False))
    action = np.stack(t.column("action").to_numpy(zero_copy_only=False))
    for i in range(len(stamps)):
        w.add("robot_state", stamps[i], q=state[i])
        w.add("action", stamps[i], target_ns=stamps[i], value=action[i])
    w.flush()
    for k, (path, start) in vids.items():
        if not Path(path).is_file():
            raise LeRobotError(f"{path}: video of episode {e_i} is missing")
        frames = _decode(path, start, len(stamps), fps)
        if len(frames) != len(stamps):
            raise LeRobotError(f"{path}: {len(frames)} video frames for {len(stamps)} rows of episode {e_i}")
        cam = k.removeprefix("observation.images.")
        for i in range(len(stamps)):
            w.add(f"camera/{cam}", stamps[i], frame_index=np.int64(i), color=frames[i])
            if i % 60 == 59:
                w.flush()
