"""Slow-fast control: a small, fast network that corrects the slow policy's plan from the wrist
force/torque, in the spirit of Reactive Diffusion Policy (RDP; Xue et al. 2025, arXiv 2503.02881).

RDP pairs a slow latent diffusion policy (action chunks from vision at a low rate) with a fast
decoder that turns the current latent chunk into actions using the newest tactile/force signals
at a high rate. Here the slow policy is any chunk policy of the stack (its plan, as the
controller committed it), and the fast part is :class:`FastCorrector`: an MLP run at ``rate_hz``
(50 Hz or more) in the controller that maps

    (the last ``window`` wrench samples at the fast period, gripper width)
        ->  a correction velocity v (3,) m/s, base frame,

which :class:`FastLayer` integrates into a position offset while the tool is in contact (the
measured force above ``contact_n``; out of contact the offset decays) and adds to every waypoint
the controller sends. In effect a learned admittance: how fast to give way or push further for
the force felt. What is taken from RDP: a slow chunk policy and a fast learned layer that reacts
to force within the chunk; simplified: RDP's fast layer is the decoder of an asymmetric action
tokenizer trained jointly with a latent slow policy, ours is a residual network trained
afterwards on a frozen slow policy (``policies.fast_training``: target = the demonstrated
action's velocity - the slow plan's velocity at the same time, on contact samples), so any slow
policy family of the stack can be paired with it.

Features are built once, here (:func:`fast_features`), for training and deployment alike. They
hold no pose: an input such as "planned minus measured TCP position" leaks the target (in the
demonstrations the TCP follows the corrected command, so the network learns to repeat its own
offset), and deployed it closed a drifting loop (measured: 55 mm sideways in 2 of 4 press
episodes). A position offset from force alone explained nothing either (held-out residual RMS
24.1 -> 23.9 mm): in the demonstrations the force is held near its target whatever the depth,
so the force says how fast to move, not where to be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: wrench scale for the features: N and N m become O(1)
WRENCH_SCALE = np.array([10.0, 10.0, 10.0, 1.0, 1.0, 1.0])


def n_features(window: int) -> int:
    """Length of :func:`fast_features`' vector for a window of ``window`` samples."""
    return 6 * window + 1


def fast_features(wrench_window: np.ndarray, gripper_width: float) -> np.ndarray:
    """The fast network's input: (6 k + 1,) float32.

    Args:
        wrench_window: (k, 6) the newest k wrench samples at the fast period, oldest first,
            [fx fy fz] N and [tx ty tz] N m, base frame (``RobotState.wrench``).
        gripper_width: measured finger opening, m.
    """
    w = np.asarray(wrench_window, np.float64) / WRENCH_SCALE
    return np.concatenate([w.ravel(), [float(gripper_width) * 10.0]]).astype(np.float32)


@dataclass
class WrenchWindow:
    """The last ``k`` wrench samples at the fast period (a ring; oldest first in :meth:`array`)."""

    k: int
    _buf: list = field(default_factory=list)

    def push(self, wrench: np.ndarray) -> None:
        self._buf.append(np.asarray(wrench, np.float64).copy())
        del self._buf[: -self.k]

    @property
    def ready(self) -> bool:
        return len(self._buf) == self.k

    def clear(self) -> None:
        self._buf.clear()

    def array(self) -> np.ndarray:
        """(k, 6)."""
        return np.stack(self._buf)


@dataclass
class FastCorrector:
    """An MLP (tanh hidden layers) from :func:`fast_features` to a correction velocity, in numpy
    (no torch in the controller; one evaluation is a few microseconds).

    Attributes:
        weights: [(W (out, in), b (out,)), ...] per layer.
        x_mean, x_std: (F,) input normalization; y_scale: (3,) output scale, m/s.
        window: wrench samples per input; rate_hz: the fast rate it was trained for.
        max_correction_m: the integrated offset's norm is clipped to this, m.
        contact_n: force norm (N) above which the tool is in contact (the layer integrates).
    """

    weights: list
    x_mean: np.ndarray
    x_std: np.ndarray
    y_scale: np.ndarray
    window: int = 5
    rate_hz: float = 50.0
    max_correction_m: float = 0.03
    contact_n: float = 0.5

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(F,) features -> (3,) correction velocity, m/s."""
        h = (np.asarray(x, np.float64) - self.x_mean) / self.x_std
        for i, (w, b) in enumerate(self.weights):
            h = w @ h + b
            if i < len(self.weights) - 1:
                h = np.tanh(h)
        return h * self.y_scale

    def save(self, path: str | Path) -> Path:
        """Write a .safetensors file (numpy tensors and JSON metadata; no pickle)."""
        import json

        from safetensors.numpy import save_file

        t = {f"w{i}": np.ascontiguousarray(w, np.float32) for i, (w, _) in enumerate(self.weights)}
        t.update({f"b{i}": np.ascontiguousarray(b, np.float32) for i, (_, b) in enumerate(self.weights)})
        t.update(
            x_mean=self.x_mean.astype(np.float32),
            x_std=self.x_std.astype(np.float32),
            y_scale=self.y_scale.astype(np.float32),
        )
        meta = {
            "kind": "fast_corrector",
            "config": json.dumps(
                {
                    "window": self.window,
                    "rate_hz": self.rate_hz,
                    "max_correction_m": self.max_correction_m,
                    "contact_n": self.contact_n,
                    "layers": len(self.weights),
                }
            ),
        }
        save_file(t, str(path), metadata=meta)
        return Path(path)

    @staticmethod
    def load(path: str | Path) -> FastCorrector:
        """Read :meth:`save`'s file.

        Raises:
            ValueError: not a fast-corrector file, its shapes do not chain, or it holds
                non-finite numbers.
        """
        import json

        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("kind") != "fast_corrector":
                raise ValueError(f"{path} is not a fast-corrector file")
            cfg = json.loads(meta["config"])
            t = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}
        weights = [(t[f"w{i}"], t[f"b{i}"]) for i in range(int(cfg["layers"]))]
        fc = FastCorrector(
            weights,
            t["x_mean"],
            t["x_std"],
            t["y_scale"],
            int(cfg["window"]),
            float(cfg["rate_hz"]),
            float(cfg["max_correction_m"]),
            float(cfg["contact_n"]),
        )
        if not all(np.all(np.isfinite(v)) for v in t.values()) or not np.all(fc.x_std > 0):
            raise ValueError(f"{path}: non-finite weights or a zero input scale")
        n_in = n_features(fc.window)
        if weights[0][0].shape[1] != n_in or weights[-1][0].shape[0] != 3 or fc.x_mean.shape != (n_in,):
            raise ValueError(f"{path}: layer shapes do not fit a window of {fc.window} wrench samples")
        return fc


class FastLayer:
    """The fast loop's logic (the controller runs :meth:`tick` at the corrector's rate).

    Each tick takes the newest robot state; its wrench joins the window. In contact (the newest
    force's norm above ``corrector.contact_n``) the corrector's velocity times the fast period is
    added to the correction (its norm clipped to ``max_correction_m``); out of contact the
    correction decays with time constant ``release_s``. With a full window and a plan, the
    schedule to send is the plan from one fast period ahead to ``lookahead_s`` ahead (a waypoint
    interpolated one period ahead, then the plan's own waypoints) shifted by the correction. Every
    other schedule the controller sends passes :meth:`shift` so the plan's next chunk does not undo
    the correction.

    Args:
        corrector: the fast network.
        lookahead_s: how far ahead a fast tick resends the plan, s.
        max_state_age_s: a robot state older than this pauses the correction (it decays).
        release_s: decay time constant of the correction out of contact, s.
    """

    def __init__(
        self, corrector: FastCorrector, lookahead_s: float = 0.5, max_state_age_s: float = 0.05, release_s: float = 0.3
    ):
        self.fc = corrector
        self.decay = float(np.exp(-1.0 / (corrector.rate_hz * release_s)))
        self.period_ns = int(round(1e9 / corrector.rate_hz))
        self.lookahead_ns = int(lookahead_s * 1e9)
        self.max_age_ns = int(max_state_age_s * 1e9)
        self.window = WrenchWindow(corrector.window)
        self.correction = np.zeros(3)
        self.stats = {"ticks": 0, "corrections": 0, "stale_states": 0, "no_wrench": 0, "non_finite": 0}

    def reset(self) -> None:
        """Forget the window and the correction (episode boundaries, holds, interventions)."""
        self.window.clear()
        self.correction = np.zeros(3)

    clear = reset

    def metrics(self) -> dict[str, float]:
        """The tick counters as ``fast_<name>`` and the correction's norm, ``fast_correction_mm`` (mm)."""
        return {
            **{f"fast_{k}": float(v) for k, v in self.stats.items()},
            "fast_correction_mm": float(np.linalg.norm(self.correction) * 1e3),
        }

    def shift(self, actions: np.ndarray) -> np.ndarray:
        """(k, D >= 3) actions with the current correction added to their positions (a copy)."""
        out = np.array(actions, float)
        out[:, :3] += self.correction
        return out

    def tick(self, now_ns: int, state, plan_stamps: np.ndarray, plan_actions: np.ndarray):
        """One fast tick: ``state`` has ``stamp_ns``, ``ee_pose`` (7,), ``gripper_width`` and
        ``wrench`` (6,) or None; ``plan_*`` the committed (uncorrected) plan, stamps (n,) ns and
        actions (n, D). Returns (stamps (k,), actions (k, D)) to send, or None."""
        self.stats["ticks"] += 1
        if state is None or getattr(state, "wrench", None) is None:
            self.stats["no_wrench"] += 1
            return None
        if now_ns - int(state.stamp_ns) > self.max_age_ns:
            self.stats["stale_states"] += 1
            self.correction *= 0.5  # decays instead of acting on an old force
            return None
        self.window.push(state.wrench)
        stamps = np.asarray(plan_stamps, np.int64)
        if not self.window.ready or len(stamps) < 2 or stamps[-1] <= now_ns + self.period_ns:
            return None
        acts = np.asarray(plan_actions, float)
        if np.linalg.norm(np.asarray(state.wrench[:3], float)) > self.fc.contact_n:
            v = self.fc(fast_features(self.window.array(), state.gripper_width))
            if not np.all(np.isfinite(v)):  # (a wrench this large overflows nothing, but never send NaN)
                self.stats["non_finite"] += 1
                return None
            c = self.correction + v * self.period_ns / 1e9
            n = float(np.linalg.norm(c))
            self.correction = c * (self.fc.max_correction_m / n) if n > self.fc.max_correction_m else c
            self.stats["corrections"] += 1
        else:
            self.correction *= self.decay
        t1 = now_ns + self.period_ns
        j = int(np.searchsorted(stamps, t1, side="right"))  # plan waypoints after t1
        first = acts[min(j, len(acts) - 1)].copy()  # orientation and gripper of the next waypoint
        first[:3] = [np.interp(t1, stamps, acts[:, k]) for k in range(3)]
        keep = (stamps > t1) & (stamps <= now_ns + self.lookahead_ns)
        out_t = np.r_[t1, stamps[keep]].astype(np.int64)
        return out_t, self.shift(np.vstack([first[None], acts[keep]]))
