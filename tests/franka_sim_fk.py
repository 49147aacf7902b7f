"""franka-sim's own forward kinematics (run with the franka-sim venv's python): the flange pose
(link7 + 0.107 m along z, the FR3 URDF's fixed joint8) of each joint vector in Q.npy, computed on
the MJCF the franka-sim server runs (made by gen_fr3_mjcf.py from franka-sim's FR3 URDF).
Usage: python franka_sim_fk.py FR3.xml Q.npy OUT.npy  (OUT: (N, 4, 4) base-frame poses)"""

import sys

import mujoco
import numpy as np

model = mujoco.MjModel.from_xml_path(sys.argv[1])
data = mujoco.MjData(model)
qs = np.load(sys.argv[2])
adr = [model.jnt_qposadr[model.joint(f"joint{i}").id] for i in range(1, 8)]
b = model.body("link7").id
out = np.zeros((len(qs), 4, 4))
for k, q in enumerate(qs):
    data.qpos[adr] = q
    mujoco.mj_kinematics(model, data)
    T = np.eye(4)
    T[:3, :3] = data.xmat[b].reshape(3, 3)
    T[:3, 3] = data.xpos[b] + T[:3, 2] * 0.107
    out[k] = T
np.save(sys.argv[3], out)
