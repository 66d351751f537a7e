"""Analysis-resynthesis evaluation of a trained model on whole test utterances (SPEC section 5).

For every file of a corpus split: the front end's power spectrogram goes through the model
(``model.resynthesize(power, past="gen" | "gt")``, latents at their means), the variance estimate is turned back
into a waveform with the original phase (:func:`lightdvae.audio.resynthesize`), and RMSE, SI-SDR, PESQ wide-band,
PESQ narrow-band (MOS-LQO, and the raw P.862 score derived from it) and ESTOI are computed against the front
end's waveform (trimmed and peak-normalised, the signal the model saw).  The model runs in this process, one
utterance at a time (no padding, so non-causal models see exactly the utterance); the metrics, whose cost is
PESQ and ESTOI, run in a pool of worker processes while the model goes on with the next files.

Output folder (default ``RUN_DIR/eval/<split>-<past>/``; ``RUN_DIR/eval/<corpus>-<split>-<past>/`` when the
corpus is not the one the run was trained on; ``-last`` appended for the last checkpoint)::

    per_file.csv      one row per file: index, name, speaker, seconds, frames, the metric columns, errors
                      ("metric: reason | ..."), model_s and metrics_s (compute seconds), path
    summary.json      kind "lightdvae-eval": model (name, label, parameters, config), dataset, split, past,
                      per metric mean / median / std / 95 % t-interval / failed count, the failed files and
                      why, PESQ variants, seconds, versions
    state.json        what the folder evaluates (checkpoint digest, corpus, split, past, metrics)
    figures/*.png     ground truth beside the resynthesis, for the first ``figures`` files
    examples/*.npz    the same files' reference and estimated power spectrograms (for ``lightdvae report``)
    audio/<name>.wav  the resynthesised waveforms, with ``save_audio`` (16-bit PCM, clipped to [-1, 1])

Interruption and resumption: each file's row is appended to ``per_file.csv`` (flushed and fsynced) as soon as
its metrics are known, so a killed evaluation loses at most the files in flight.  Running the same evaluation
again reads the rows already there and evaluates only the missing files; when everything is done, the CSV is
rewritten in file order and ``summary.json`` is written, both atomically.  A folder that holds another
evaluation (other checkpoint weights, corpus, split, past mode or metrics) is refused unless ``overwrite``.

Typical use::

    from lightdvae.evaluate import evaluate_run
    summary = evaluate_run("runs/light", data="builtin", split="test", past="gen")
    summary["metrics"]["si_sdr"]["mean"], summary["metrics"]["si_sdr"]["ci_half"]

Submodules:

* :mod:`~lightdvae.evaluate.run`: :func:`evaluate_run` and :func:`evaluate_model`, the output folder's state
  (resume, refuse, overwrite);
* :mod:`~lightdvae.evaluate.loop`: the per-file loop (model here, metrics in the pool, rows into the journal);
* :mod:`~lightdvae.evaluate.resynthesis`: the per-file step, :func:`resynthesize_file` /
  :func:`resynthesize_utterance` (also used by ``scripts/band_sisdr.py`` and ``scripts/segment_sisdr.py``);
* :mod:`~lightdvae.evaluate.journal`: ``per_file.csv``, its columns, writer and reader :func:`read_per_file`;
* :mod:`~lightdvae.evaluate.summary`: ``summary.json``, :func:`read_summary` and the closing line;
* :mod:`~lightdvae.evaluate.workers`: the metric worker pool;
* :mod:`~lightdvae.evaluate.settings`: :class:`EvalSettings`, the options of one evaluation, checked once;
* :mod:`~lightdvae.evaluate.outputs`: the output folder's file names, :func:`default_out_dir`, figures and
  examples.
"""

from __future__ import annotations

from lightdvae.errors import EvalError
from lightdvae.evaluate.journal import CSV_COLUMNS, MODEL_ERROR, read_per_file
from lightdvae.evaluate.outputs import (
    AUDIO_DIR,
    DEFAULT_FIGURES,
    EXAMPLE_DIR,
    FIGURE_DIR,
    PER_FILE,
    STATE,
    SUMMARY,
    default_out_dir,
)
from lightdvae.evaluate.resynthesis import resynthesize_file, resynthesize_utterance
from lightdvae.evaluate.run import evaluate_model, evaluate_run
from lightdvae.evaluate.settings import PASTS, EvalSettings
from lightdvae.evaluate.summary import FORMAT_VERSION, SUMMARY_KIND, read_summary
from lightdvae.models import model_label

__all__ = [
    "EvalError",
    "evaluate_run",
    "evaluate_model",
    "model_label",
    "default_out_dir",
    "read_per_file",
    "read_summary",
    "resynthesize_file",
    "resynthesize_utterance",
    "EvalSettings",
    "SUMMARY_KIND",
    "FORMAT_VERSION",
    "CSV_COLUMNS",
    "PER_FILE",
    "SUMMARY",
    "STATE",
    "AUDIO_DIR",
    "FIGURE_DIR",
    "EXAMPLE_DIR",
    "DEFAULT_FIGURES",
    "PASTS",
    "MODEL_ERROR",
]
