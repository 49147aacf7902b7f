"""Read a recorded episode: its metadata, its streams with their rates, and a look at the actions
and one camera frame.

    python3 examples/read_episode.py episodes/episode_000000.zarr

Episodes are zarr v3 groups (robot_stack/data/dataset.py), one per episode, every sample at its
capture stamp on the stack clock (ns). `open_episode` reads lazily: `ep.array(stream, field)[i]`
reads one row, `ep.load(stream)` a whole stream.
"""

from __future__ import annotations

import sys

import numpy as np

from robot_stack.data.dataset import ORIGINS, DatasetError, open_episode


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: read_episode.py EPISODE.zarr", file=sys.stderr)
        return 2
    try:
        ep = open_episode(argv[0])
    except DatasetError as e:
        print(f"cannot read {argv[0]}: {e}", file=sys.stderr)
        return 1
    print(f"{ep.path.name}: task {ep.meta.get('task', '?')!r}, status {ep.meta.get('status', '?')}")
    for stream in ep.streams():
        stamps = np.asarray(ep.array(stream, "stamp_ns")[:], np.int64)
        span_s = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) > 1 else 0.0
        rate = (len(stamps) - 1) / span_s if span_s > 0 else 0.0
        print(f"  {stream:<20} {len(stamps):>6} samples over {span_s:6.2f} s ({rate:6.1f} Hz)")
    if "action" in ep.streams():
        act = ep.load("action")
        origin = int(act["origin"][0])
        who = ORIGINS[origin] if 0 <= origin < len(ORIGINS) else "unknown"
        print(f"  first action target: {np.round(act['pose'][0][:3], 4).tolist()} m, from the {who}")
    cams = [s for s in ep.streams() if s.startswith("camera/")]
    if cams:
        color = ep.array(cams[0], "color")[0]
        print(f"  {cams[0]} frame 0: {color.shape} {color.dtype}, mean {color.mean():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
