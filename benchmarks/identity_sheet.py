"""Stack the grids of a time_to_identity run: per concept its training photos, then alone and all active.

python benchmarks/identity_sheet.py build/lab-identity/lab/grids benchmarks/lab-base/lab-concepts.png
"""

import sys
from pathlib import Path

from PIL import Image, ImageDraw

grids, out = Path(sys.argv[1]), Path(sys.argv[2])
examples = Path(__file__).resolve().parent.parent / "examples"
rows = []
for name in ("mascot", "emblem", "robot"):
    photos = sorted((examples / name).glob("*.png"))[:8]
    strip = Image.new("RGB", (128 * len(photos), 128), "white")
    for i, p in enumerate(photos):
        strip.paste(Image.open(p).convert("RGB").resize((128, 128), Image.Resampling.NEAREST), (128 * i, 0))
    rows.append((f"{name}: training photos", strip))
    for which in ("alone", "all"):
        for f in sorted(grids.glob(f"*-{name}-{which}.png")):
            rows.append((f"{name}: {which}", Image.open(f).convert("RGB")))
w = max(r.width for _, r in rows) + 170
h = sum(r.height for _, r in rows)
sheet = Image.new("RGB", (w, h), "white")
d = ImageDraw.Draw(sheet)
y = 0
for label, r in rows:
    d.text((4, y + r.height // 2 - 6), label, fill="black")
    sheet.paste(r, (170, y))
    y += r.height
sheet.save(out)
print(out, sheet.size)
