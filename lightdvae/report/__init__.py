"""The paper's tables as Markdown, from the JSON files that ``lightdvae eval`` (and the FDSD computation) write.

``lightdvae report RUN_DIR... [--out report.md]`` searches every given folder (recursively) for

* evaluation summaries: ``summary.json`` files with ``"kind": "lightdvae-eval"`` (:mod:`lightdvae.evaluate`);
* FDSD results: any ``*.json`` with ``"kind": "lightdvae-fdsd"``, of this form (the fields the report reads)::

      {"kind": "lightdvae-fdsd",
       "model": {"name": "light-dvae", "label": "LigHT-DVAE"},       # or a plain label string
       "run_dir": "...",                                             # optional
       "dataset": {"name": "corpus", "split": "test"},               # the real audio compared with
       "feature_network": "lightdvae-ds2-small (CTC, built-in corpus phonemes)",
       "fdsd": {"mean": 22.5, "std": 0.4, "draws": 5, "n": 200},     # mean +- std over draws of n samples
       "floor": {"exact_phase": {"mean": ..., "std": ...},           # optional: real vs real
                 "griffin_lim": {"mean": ..., "std": ...}}}

and writes, per corpus and split:

1. the analysis-resynthesis table (the paper's main table): RMSE, SI-SDR, PESQ-WB, PESQ-NB, PESQ-NB raw and
   ESTOI, mean +- half-width of the 95 % interval of the mean, with the decoder fed its own past (GEN; a model
   evaluated only with the true past is marked "GT"), the best mean of each column in bold, and the medians;
2. the structure study: GEN and GT side by side for every model evaluated both ways;
3. the FDSD table, naming the feature network (or a line saying no FDSD results were found);
3b. the enhancement tables (:mod:`~lightdvae.report.enhance_section`), from the ``summary.json`` files with
   ``"kind": "lightdvae-enhance"`` that ``lightdvae enhance RUN --data SPEC`` writes: per noisy set, each prior's
   SI-SDR / PESQ-WB / PESQ-NB / ESTOI improvement (mean +- CI) and output scores, and the SI-SDR improvement per SNR;
4. with ``--out``: figures (ground truth beside each model's resynthesis; GEN beside GT) in ``figures/`` next to
   the report, from the examples the evaluations saved;
5. what the demo's report shows beside them, from the run folders (``config.json``, ``log.csv``, ``status.json``)
   and the results found with them: the shipped priors evaluated (their cards); the training table
   (:mod:`~lightdvae.report.runs_section`); the paper's findings on paired per-file SI-SDR
   (:mod:`~lightdvae.report.findings`); a figure of each model's samples (``generation.json`` of ``lightdvae
   generate``) and the w exchange of each HiT/LigHT-DVAE (``swap_w.json`` of ``lightdvae swap-w``) with its
   one-line verdict (:mod:`~lightdvae.report.samples_section`); the cost (:mod:`~lightdvae.report.cost_section`:
   recorded times, and the native-vs-reference timings of a ``cost.json``).  A piece that is missing gets one
   line with the command that makes it; the w exchange of a run without one is computed (two test utterances of
   its corpus through the model, into ``RUN/swap_w/``) unless ``--read-only``.

Every table says which corpus and split it is on and which PESQ variant each column is.  A mean at the floor of
its metric's scale is never bold (:data:`~lightdvae.report.tables.SCALE_FLOORS`), and FDSD results of different
sample sizes get their own tables, each with the real-vs-real floors measured at its size.

Modules: :mod:`~lightdvae.report.results` (finding the results and runs: :func:`find_all`),
:mod:`~lightdvae.report.tables` (number formatting, row order and labels, Markdown tables),
:mod:`~lightdvae.report.analysis` (the analysis-resynthesis table and the structure study),
:mod:`~lightdvae.report.fdsd_section` (the FDSD tables), :mod:`~lightdvae.report.figure_section` (the figures),
:mod:`~lightdvae.report.build` (:func:`build_report` and :func:`write_report`).
"""

from lightdvae.errors import ReportError
from lightdvae.report.analysis import STRUCTURE_METRICS
from lightdvae.report.build import FIGURE_DIR, build_report, write_report
from lightdvae.report.results import (
    COST_KIND,
    ENHANCE_KIND,
    EVAL_KIND,
    FDSD_KIND,
    Found,
    find_all,
    find_enhancements,
    find_results,
)
from lightdvae.report.tables import DECIMALS

__all__ = [
    "ReportError",
    "find_results",
    "find_enhancements",
    "find_all",
    "Found",
    "COST_KIND",
    "ENHANCE_KIND",
    "build_report",
    "write_report",
    "FIGURE_DIR",
    "EVAL_KIND",
    "FDSD_KIND",
    "DECIMALS",
    "STRUCTURE_METRICS",
]
