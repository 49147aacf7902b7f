"""Write an FR3 MJCF for franka-sim from the URDF inside the franka_sim package (run with the
franka-sim venv's python): visual and collision elements dropped (no meshes to fetch), loaded with
MuJoCo's MjSpec, armature 0.1 on every joint. Usage: python gen_fr3_mjcf.py OUT.xml"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import franka_sim
import mujoco

out = Path(sys.argv[1])
root = ET.parse(Path(franka_sim.__file__).parent / "models" / "fr3.urdf").getroot()
for link in root.iter("link"):
    for tag in ("visual", "collision"):
        for el in link.findall(tag):
            link.remove(el)
out.parent.mkdir(parents=True, exist_ok=True)
urdf = out.with_suffix(".urdf")
ET.ElementTree(root).write(urdf)
spec = mujoco.MjSpec.from_file(str(urdf))
for j in spec.joints:
    j.armature = 0.1
spec.compile()
out.write_text(spec.to_xml())
print(out)
