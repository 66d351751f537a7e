#!/usr/bin/env bash
# The enhancement table of the README: every available prior on one small built-in noisy set, then the report.
#
#   bash scripts/enhance_study.sh [OUT] [FIXTURES]
#
# OUT (default runs/enhance-study) receives the noisy set, the imported checkpoints and the results;
# FIXTURES (default ../shared/fixtures/dvae) holds the DVAE authors' VoiceBank checkpoints (vb_vae, vb_dkf,
# vb_rvae, vb_srnn: checkpoint.pt + config.ini); those absent are left out.  Each step resumes when run again.
# Priors: the shipped ones (lightdvae info) and the imported VoiceBank ones, at the reference's settings
# (100 iterations, K = 8, Adam 1e-3, beta 1), and the VAE and LigHT-DVAE priors also with beta 0.01 (their training
# weight).  Then how the result depends on the number of EM iterations (ITERATIONS, default "30 300"): the shipped
# VAE and the VoiceBank VAE at beta 0.01, the VoiceBank DKF at beta 1, the shipped LigHT-DVAE at beta 0.01.
set -euo pipefail
OUT=${1:-runs/enhance-study}
FIXTURES=${2:-../shared/fixtures/dvae}
THREADS=${THREADS:-1}
mkdir -p "$OUT"
SET="$OUT/noisy"

# 12 test utterances, each once, over 3 SNRs x 2 noises (4 per SNR, 6 per noise)
lightdvae corpus noisy "$SET" --speech builtin --snr 0,5,10 --noises white,babble --files 12 --design balanced \
    --seed 0 --quiet

priors=()
for name in $(python -c "from lightdvae.models import pretrained_names; print(' '.join(pretrained_names()))"); do
    priors+=("pretrained:$name")
done
for model in vae dkf rvae srnn; do
    if [ -f "$FIXTURES/vb_$model/checkpoint.pt" ]; then
        [ -f "$OUT/vb-$model/config.json" ] || \
            lightdvae import-dvae "$FIXTURES/vb_$model/checkpoint.pt" "$FIXTURES/vb_$model/config.ini" \
                --out "$OUT/vb-$model" >/dev/null
        priors+=("$OUT/vb-$model")
    fi
done

for prior in "${priors[@]}"; do
    tag=$(echo "$prior" | tr ':/' '--')
    echo "== $prior"
    lightdvae enhance "$prior" --data "noisy:$SET" --out "$OUT/results/$tag" --threads "$THREADS" --quiet
    case "$prior" in
        pretrained:vae | */vb-vae | pretrained:light-dvae) lightdvae enhance "$prior" --data "noisy:$SET" --beta 0.01 --out "$OUT/results/$tag-beta0.01" \
                  --threads "$THREADS" --quiet ;;
    esac
done
for iterations in ${ITERATIONS:-30 300}; do
    for spec in "pretrained:vae 0.01" "$OUT/vb-vae 0.01" "$OUT/vb-dkf 1" "pretrained:light-dvae 0.01"; do
        read -r prior beta <<< "$spec"
        case "$prior" in pretrained:*) ;; *) [ -f "$prior/config.json" ] || continue ;; esac
        tag=$(echo "$prior" | tr ':/' '--')
        echo "== $prior, beta $beta, $iterations iterations"
        lightdvae enhance "$prior" --data "noisy:$SET" --beta "$beta" --iterations "$iterations" \
            --out "$OUT/results/$tag-beta$beta-i$iterations" --threads "$THREADS" --quiet
    done
done
lightdvae report "$OUT/results" --out "$OUT/report.md" >/dev/null
echo "report: $OUT/report.md"
