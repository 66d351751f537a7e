"""The models of an experiment: one :class:`Entry` per trained model (registry name, config overrides, training
mode, Adam learning rate), the table of them (:data:`ENTRIES`), the demo's and the paper's selections, and the
parser of ``--models``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lightdvae.errors import ExperimentError
from lightdvae.models import SEES_PAST_SPEECH, model_label

__all__ = [
    "BASELINE_LR",
    "TRANSFORMER_LR",
    "Entry",
    "ENTRIES",
    "DEMO_MODELS",
    "PAPER_MODELS",
    "parse_models",
]

BASELINE_LR = 1e-3  #: Adam learning rate of the classic DVAEs: the published protocol (SPEC section 6)
#: Adam learning rate of the transformer DVAEs.  At 1e-3 the post-norm transformers collapse their latents on a
#: short budget (validation KL 0.9-1.8 nats per frame after 5 minutes, GEN SI-SDR -4.3 to -4.9 dB on the built-in
#: corpus); at 3e-4 LigHT-DVAE keeps its latents (KL 37) and halves its validation loss in the same 5 minutes
#: (README, "Reproducing the paper's findings").
TRANSFORMER_LR = 3e-4


@dataclass(frozen=True)
class Entry:
    """One trained model of an experiment: a registry name, config overrides, the training mode and its Adam
    learning rate (an experiment's ``lr`` overrides it for every model)."""

    key: str
    model: str
    model_config: dict = field(default_factory=dict)
    training: str = "tf"
    lr: float = BASELINE_LR

    @property
    def label(self) -> str:
        return model_label(self.model, self.model_config, self.training)

    @property
    def sees_past_speech(self) -> bool:
        return self.model in SEES_PAST_SPEECH


def _entries() -> dict[str, Entry]:
    items = [
        Entry("vae", "vae"),
        Entry("dkf", "dkf"),
        Entry("rvae", "rvae"),
        Entry("srnn-tf", "srnn"),
        Entry("srnn-ss", "srnn", training="ss"),
        Entry("hit-dvae", "hit-dvae", lr=TRANSFORMER_LR),
        Entry("light-dvae", "light-dvae", lr=TRANSFORMER_LR),
    ]
    for base, key in (("hit-dvae", "hit"), ("light-dvae", "light")):
        items.append(Entry(f"{key}-inv-s", base, {"inv_s": True}, lr=TRANSFORMER_LR))
        items.append(Entry(f"{key}-inv-s-nr", base, {"inv_s": True, "no_residual": True}, lr=TRANSFORMER_LR))
    return {e.key: e for e in items}


#: Every model the experiments know, by key (``lightdvae reproduce --models`` takes these keys).  Every module of
#: the package reads this one dict (a test may replace entries in it).
ENTRIES: dict[str, Entry] = _entries()
#: The demo: LigHT-DVAE and two baselines (DKF: the strongest classic model for its size; SRNN trained with
#: teacher forcing: the model whose GEN collapse the paper shows).
DEMO_MODELS = ("light-dvae", "dkf", "srnn-tf")
#: The paper's eleven models (main table and structure study).
PAPER_MODELS = (
    "vae",
    "dkf",
    "rvae",
    "srnn-tf",
    "srnn-ss",
    "hit-dvae",
    "light-dvae",
    "hit-inv-s",
    "hit-inv-s-nr",
    "light-inv-s",
    "light-inv-s-nr",
)


def parse_models(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"light-dvae,dkf"`` / ``"all"`` / a list -> entry keys, checked."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if items == ["all"]:
        return PAPER_MODELS
    if items == ["demo"]:
        return DEMO_MODELS
    unknown = [t for t in items if t not in ENTRIES]
    if unknown or not items:
        raise ExperimentError(
            f"unknown model key(s) {', '.join(unknown) or '(none given)'}; valid: all, demo, {', '.join(ENTRIES)}"
        )
    if len(set(items)) != len(items):
        raise ExperimentError(f"a model is listed twice in {','.join(items)}")
    return tuple(items)
