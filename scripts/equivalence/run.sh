#!/usr/bin/env bash
# Fixed-seed train / eval / generate / swap-w / tiny reproduce, to compare the code before and after a restructure
# (issue #13): same weights, same metric columns, same FDSD, same result-file keys.
# usage, from the repository root with the venv active:
#   git worktree add /tmp/old REV && cp lightdvae/_C*.so /tmp/old/lightdvae/
#   (cd /tmp/old && PYTHONPATH=/tmp/old bash /path/to/scripts/equivalence/run.sh /tmp/eq-before)
#   bash scripts/equivalence/run.sh /tmp/eq-after
#   python scripts/equivalence/compare.py /tmp/eq-before /tmp/eq-after
set -euo pipefail
OUT=$1; rm -rf "$OUT"; mkdir -p "$OUT"
export OMP_NUM_THREADS=1 LIGHTDVAE_CACHE=$OUT/cache LIGHTDVAE_DATA=$OUT/data
python - "$OUT" <<'PY'
import sys; sys.path.insert(0, "tests")
from pathlib import Path
from helpers import write_corpus
files = [(s, f"spk{k}", i, 1.6 + 0.2 * i) for s, k0 in (("train", 0), ("val", 3), ("test", 5)) for k in range(k0, k0 + 2) for i in range(4 if s == "train" else 3)]
write_corpus(Path(sys.argv[1]) / "corpus", files)
PY
C=$OUT/corpus
python -m lightdvae train --model vae --data $C --out $OUT/vae --epochs 3 --seed 0 --batch-size 8 --quiet
python -m lightdvae train --model srnn --training ss --ss-start 1 --ss-end 3 --data $C --out $OUT/srnn --epochs 3 --seed 0 --batch-size 8 --quiet
python -m lightdvae train --model light-dvae --data $C --out $OUT/light --epochs 3 --seed 0 --batch-size 8 --lr 3e-4 --quiet --set d_model=32 --set ff_dim=64
for r in vae srnn light; do
  python -m lightdvae eval $OUT/$r --data $C --past both --workers 0 --quiet
  python -m lightdvae generate $OUT/$r --n 6 --frames 40 --quiet --draws 3
done
python -m lightdvae swap-w $OUT/light $C/test/spk5/utt0.wav $C/test/spk6/utt1.wav --out $OUT/swap --quiet
python -m lightdvae reproduce --models vae,light-dvae --minutes-per-model 0.15 --data $C --out $OUT/repro --no-cost --quiet --gen-n 4 --gen-frames 40 --draws 2 || true
