"""The built-in corpus: speech synthesised with espeak-ng, so the package trains and evaluates with no download.

``build_corpus(out, minutes=30)`` (``lightdvae corpus build OUT``) writes::

    OUT/train/<speaker>/<speaker>_0000.wav ...   16 kHz mono 16-bit PCM, peak -0.9 dBFS
    OUT/val/<speaker>/...
    OUT/test/<speaker>/...
    OUT/manifest.jsonl                           one JSON object per file (see below)
    OUT/corpus.json                              settings, speakers, per-split totals; written last

Speakers.  Each speaker is one espeak-ng voice + variant (``en-us+m1``, ``en-gb-scotland+f3``, ``en-029+klatt2``,
...) with its own base pitch and speed; every utterance adds a small random jitter to both.  Some combinations
silently ignore the variant (``en-gb+f2`` sounds exactly like ``en-gb``), and a few variants are copies of each
other, so every candidate voice is first synthesised on a probe sentence at the default pitch and speed and
kept only if its audio differs from every voice kept so far: not byte-identical, and its long-term average
spectrum at least :data:`MIN_VOICE_DISTANCE_DB` away.

Splits are speaker-disjoint (about 80 / 10 / 10 % of the speakers) and sentence-disjoint (the sentences of
``sentences.txt``, written for this project, are partitioned in the same proportions), so validation and test
measure generalisation to new voices saying new sentences.  Voices that share a variant (``en+f2`` and
``en-us+f2``: one timbre in two accents) are kept in the same split whenever there are enough variants.

Manifest rows: ``file`` (relative to OUT), ``split``, ``speaker``, ``voice``, ``pitch``, ``speed`` (espeak-ng
``-p`` / ``-s``), ``seconds``, ``text``, ``phonemes`` (espeak-ng ``-q -x`` mnemonics in the speaker's accent,
clauses joined by a space) and ``phoneme_tokens`` (the same, one list of phoneme symbols per word, from
``--sep``; stress marks stay attached to the following vowel, ``_:`` etc. are pauses).

More training speech.  ``build_corpus(out, train_minutes=M)`` (``--train-minutes M``) keeps the validation and
test splits of ``minutes`` exactly (same speakers, sentences and audio: models trained on it are scored on the
default test split) and synthesises M minutes of training speech: the training speakers say the training sentences
in new pairings, and speakers from the rest of the voice pool join them (about ten files each, up to 120 speakers,
never with the variant of a validation or test voice).

A noise floor.  espeak-ng's pauses are digital silence (power exactly 0 in whole frames, about 1 % of them), which
no recording has and where the Itakura-Saito loss of SPEC section 7 (``s e^{-logvar} - log(s + eps) + logvar - 1``)
has no minimum: at ``s = 0`` it falls without bound as the decoder's log-variance does, so training keeps pushing the
variance of "silence" down and a frame taken for silence costs ever more.  ``build_corpus(out, noise_floor_db=-70)``
(``--noise-floor -70``) adds to every file white Gaussian noise that many dB below the files' peak, seeded by the
file (reproducible, resumable), as a quiet studio would; the default leaves the audio as espeak-ng writes it.

A build is deterministic for given options, written file by file (atomically), and resumable: run the same
command again after an interruption and it keeps the files already written.

Submodules: :mod:`~lightdvae.data.builtin.espeak` (the espeak-ng wrapper), :mod:`~lightdvae.data.builtin.voices`
(the voice pool and the probe keeping distinct voices), :mod:`~lightdvae.data.builtin.plan` (sentences, speakers,
splits and utterances, before any audio), :mod:`~lightdvae.data.builtin.settings` (the options a corpus is a
function of, as recorded) and :mod:`~lightdvae.data.builtin.build` (:func:`build_corpus`).  The
corpus layout it writes is read by :mod:`lightdvae.data.corpora` (:func:`read_manifest`).  ``import lightdvae.data``
does not import this package: it is only needed to build a corpus.
"""

from lightdvae.data.builtin.build import build_corpus
from lightdvae.data.builtin.espeak import (
    ESPEAK_INSTALL,
    ESPEAK_INSTALL_HINT,
    PEAK,
    EspeakNotFound,
    espeak_path,
    espeak_version,
    synthesize,
    transcribe,
)
from lightdvae.data.builtin.plan import (
    MAX_SPEAKERS,
    MIN_SPEAKERS,
    PITCH_JITTER,
    PITCH_RANGE,
    SPEED_JITTER,
    SPEED_RANGE,
    SPLIT_FRACTIONS,
    UTTERANCES_PER_SPEAKER,
    load_sentences,
)
from lightdvae.data.builtin.settings import (
    DEFAULT_MINUTES,
    FORMAT,
    FORMAT_VERSION,
    NOISE_FLOOR_RANGE_DB,
    BuildSettings,
    describe_settings,
    has_default_held_out_splits,
)
from lightdvae.data.builtin.voices import (
    DEFAULT_BASES,
    DEFAULT_VARIANTS,
    MIN_VOICE_DISTANCE_DB,
    PROBE_TEXT,
    VoiceProbe,
    candidate_voices,
    distinct_voices,
    probe_voice,
)
from lightdvae.data.corpora import BUILD_STATE, read_manifest
from lightdvae.errors import DataError

__all__ = [
    "ESPEAK_INSTALL",
    "EspeakNotFound",
    "espeak_path",
    "espeak_version",
    "load_sentences",
    "candidate_voices",
    "VoiceProbe",
    "probe_voice",
    "distinct_voices",
    "build_corpus",
    "describe_settings",
    "has_default_held_out_splits",
    "read_manifest",
]
#: Also importable from here, as from the single module this package replaced.
__all__ += [
    "ESPEAK_INSTALL_HINT",
    "PEAK",
    "synthesize",
    "transcribe",
    "BuildSettings",
    "FORMAT",
    "FORMAT_VERSION",
    "DEFAULT_MINUTES",
    "NOISE_FLOOR_RANGE_DB",
    "BUILD_STATE",
    "SPLIT_FRACTIONS",
    "UTTERANCES_PER_SPEAKER",
    "MIN_SPEAKERS",
    "MAX_SPEAKERS",
    "PITCH_RANGE",
    "SPEED_RANGE",
    "PITCH_JITTER",
    "SPEED_JITTER",
    "PROBE_TEXT",
    "MIN_VOICE_DISTANCE_DB",
    "DEFAULT_BASES",
    "DEFAULT_VARIANTS",
    "DataError",
]
