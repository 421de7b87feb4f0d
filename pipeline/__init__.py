"""The geospatial and learning core of changeflow: plain functions, no orchestration.

Importing it sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch loads OpenMP: with
the default spin-waiting, every parallel op of torch stalls whenever another process holds one of the
cores, and on a busy 2-core machine an AdamW step of GOLD-lite took 2.3 s instead of 45 ms and one
demo training epoch 191 s instead of 14 s. Passive waiting costs little on an idle machine (one
3x3 conv at 4x64x128²: 50 ms passive vs 67 ms default, measured under load).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
