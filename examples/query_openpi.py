"""Query a policy server that speaks openpi's websocket protocol (openpi's own `serve_policy.py`,
or a robot_stack policy node with `openpi: {port: ...}`): read its metadata, send one observation,
print the action chunk.

    python3 examples/query_openpi.py --port 8000 --state 0.45 0.0 0.3 1 0 0 0 --prompt "reach the cube"

The observation keys are the server's: this sends `observation/state` and `prompt`; a DROID or
ALOHA server wants its own image and state keys (its metadata lists them when it is ours). The
protocol has no authentication: reach a remote server through an SSH tunnel to localhost, or
`wss://` with an API key (robot_stack's client refuses plain `ws://` off the host).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from robot_stack.comm.openpi import OpenpiProtocolError, packb, unpackb


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--state", type=float, nargs="+", default=[0.45, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0])
    ap.add_argument("--prompt", default="")
    ap.add_argument("--timeout", type=float, default=10.0, help="s")
    args = ap.parse_args(argv)
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    try:
        with connect(f"ws://{args.host}:{args.port}", open_timeout=args.timeout, max_size=None) as ws:
            metadata = unpackb(ws.recv(timeout=args.timeout))  # the server speaks first: its metadata
            print(f"server metadata keys: {sorted(metadata)}")
            obs = {"observation/state": np.asarray(args.state, np.float64)}
            if args.prompt:
                obs["prompt"] = args.prompt
            t0 = time.monotonic()
            ws.send(packb(obs))
            reply = ws.recv(timeout=args.timeout)
            if isinstance(reply, str):  # openpi reports a bad request as a text frame
                print(f"the server refused the observation: {reply}", file=sys.stderr)
                return 1
            out = unpackb(reply)
    except (OSError, TimeoutError, WebSocketException, OpenpiProtocolError) as e:
        print(f"cannot query ws://{args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    actions = np.asarray(out["actions"])
    timing = out.get("server_timing", {})
    print(
        f"actions {actions.shape} {actions.dtype}, server infer {timing.get('infer_ms', float('nan')):.1f} ms, "
        f"round trip {(time.monotonic() - t0) * 1e3:.1f} ms"
    )
    print(f"first action: {np.round(actions[0], 4).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
