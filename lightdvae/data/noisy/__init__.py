"""Noisy test sets for speech enhancement, with no download (issue #16).

``build_noisy_set(OUT, speech="builtin", snrs="-5,0,5,10")`` (``lightdvae corpus noisy OUT``) mixes the test split
of a corpus with noises the package generates or with the user's noise recordings, at exact SNRs, and writes
``noisy/``, ``clean/``, ``manifest.jsonl`` and ``noisy.json``.  ``read_noisy_set("noisy:OUT")`` reads such a set
back, and the real ones users have: ``vbd:DIR`` (VoiceBank-DEMAND) and ``wsj0-qut:DIR`` (QUT-NOISE-WSJ0)::

    from lightdvae.data.noisy import build_noisy_set, read_noisy_set
    build_noisy_set("noisy-builtin", snrs=[-5, 0, 5, 10], seed=0)
    for item in read_noisy_set("noisy:noisy-builtin"):
        noisy, clean = item.load()          # float32 at 16 kHz, aligned
        print(item.name, item.snr_db, item.noise)

Submodules, one purpose each: :mod:`~lightdvae.data.noisy.generators` (white, pink, brown, speech-shaped, babble,
modulated and engine noise), :mod:`~lightdvae.data.noisy.sources` (the noise tracks of a set: generated, or a
folder's files), :mod:`~lightdvae.data.noisy.mixing` (exact-SNR mixing, the SNR options),
:mod:`~lightdvae.data.noisy.build` (the set builder) and :mod:`~lightdvae.data.noisy.reader` (the reader).
"""

from lightdvae.data.noisy.build import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_FIELDS,
    SET_FILE,
    NoisyBuild,
    NoisySettings,
    build_noisy_set,
)
from lightdvae.data.noisy.generators import GENERATED_NOISES
from lightdvae.data.noisy.mixing import PEAK_LIMIT, SNR_DEFINITION, SNR_RANGE, mix_at_snr, parse_snrs, snr_db, snr_tag
from lightdvae.data.noisy.reader import NOISY_PREFIXES, NoisyItem, NoisySet, is_noisy_spec, read_noisy_set

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "MANIFEST_FIELDS",
    "SET_FILE",
    "GENERATED_NOISES",
    "NOISY_PREFIXES",
    "PEAK_LIMIT",
    "SNR_DEFINITION",
    "SNR_RANGE",
    "NoisyBuild",
    "NoisySettings",
    "NoisyItem",
    "NoisySet",
    "build_noisy_set",
    "read_noisy_set",
    "is_noisy_spec",
    "mix_at_snr",
    "parse_snrs",
    "snr_db",
    "snr_tag",
]
