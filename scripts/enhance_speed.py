"""The E-step speed tables of the README (issue #16): ms per EM iteration per utterance, one thread.

    OMP_NUM_THREADS=1 python scripts/enhance_speed.py [--priors dkf rvae srnn] [--iterations 4] [--repeats 3]
                                                      [--seconds 2.5] [--latent-e-step [--speech-past estimate]]

For each prior (package default sizes, random weights, float32): the reference path at batch 1 (the models'
pure-PyTorch loops, one utterance through the model's own forward), the native path at batch 1 (what
``enhance`` runs: the native loops, posterior steps on raw pointers) and at batch 16 (``enhance_batch`` of 16
utterances: the batched engine), each the EM's own time (``EnhanceResult.seconds``) over its iterations, the
fastest of ``--repeats`` runs (3) taken in turn with the other paths' (:func:`interleaved`), all in one process;
speed-ups against the reference at batch 1.  The issue's targets: >= 5x at batch 1, >= 20x with 16 utterances
together; LigHT-DVAE: a batch of 16 under 0.5 s per iteration.

``--latent-e-step`` runs both native paths with the latent E-step (``latent_e_step=True``: Adam on the posteriors;
the encoder runs once per utterance), against the same reference; ``--speech-past estimate`` with it feeds SRNN's
and the transformers' decoders the EM's estimate of the past speech (no frame-by-frame loop).

``--parts`` instead times the parts of a transformer prior's iteration at batch 1 one by one
(docs/enhancement/README.md, "Why the transformer priors stay near 2x at batch 1"): the decoding loop as the E-step
runs it, the w and z encoders forward and backward, the parallel decoder with input gradients, the encoders forward
alone.

The last two columns are the work of one EM iteration of the batch of 16 (``torch.utils.flop_counter``: the products
and attention, which is what a GEMM floor is made of, and here also the products of the LSTM layers, ATen's and the
package's, which the counter does not know: :func:`lstm_layer_flop`) and the rate the native path ran it at: a
target below ``GFLOP / (this CPU's GEMM rate)`` cannot be met by any implementation of the same computation. Not
counted: the products inside the package's own native loops (SRNN's own-past decoding at batch 16, whose ATen calls
run inside the op).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from lightdvae.enhance import enhance_batch
from lightdvae.enhance.settings import SPEECH_PASTS
from lightdvae.models import build
from lightdvae.runtime import backend_scope

SAMPLE_RATE = 16000


def waves(seconds: float, n: int) -> list[torch.Tensor]:
    """``n`` noisy-like waveforms (speech-band noise with a syllable envelope), seeded; benchmarks/test_enhance.py
    times the same ones."""
    g = torch.Generator().manual_seed(0)
    samples = int(seconds * SAMPLE_RATE)
    t = torch.arange(samples) / SAMPLE_RATE
    envelope = torch.sin(2 * torch.pi * 3.0 * t).clamp_min(0.0) + 0.1
    return [0.1 * envelope * torch.randn(samples, generator=g) for _ in range(n)]


def per_iteration(model, batch: list[torch.Tensor], iterations: int, backend: str, **options) -> float:
    """Seconds of EM per iteration for the whole batch, one run (:func:`interleaved` keeps the fastest of several);
    ``options``: EM options (``latent_e_step=True``)."""
    with backend_scope(backend):
        result = enhance_batch(model, batch, iterations=iterations, one_at_a_time=backend == "ref", **options)[0]
    return result.seconds / result.iterations


def interleaved(paths: list, repeats: int) -> list[float]:
    """The fastest of ``repeats`` runs of each of ``paths`` (callables returning seconds), run in turn (the first
    path, the second, ..., then again): a slower spell of a shared machine slows every path alike instead of the
    one that ran during it, so that their ratios hold."""
    best = [float("inf")] * len(paths)
    for _ in range(repeats):
        for i, path in enumerate(paths):
            best[i] = min(best[i], path())
    return best


def lstm_layer_flop(input_shape, w_ih_shape, w_hh_shape, *args, **kwargs) -> int:
    """FLOP of one ATen LSTM layer and direction on the CPU (``aten.mkldnn_rnn_layer``; input ``(frames, batch,
    in)``): its products, ``2 x frames x batch x 4H x (in + H)``, the gate arithmetic left out as for a Linear."""
    frames, batch = input_shape[0], input_shape[1]
    return 2 * frames * batch * w_ih_shape[0] * (w_ih_shape[1] + w_hh_shape[1])


def lstm_layer_backward_flop(*args, **kwargs) -> int:
    """Its backward: the gradients of the input and the hidden state and of both weights, twice the forward."""
    return 2 * lstm_layer_flop(*args, **kwargs)


def native_lstm_backward_flop(grad_shape, *args, **kwargs) -> int:
    """The package's LSTM layer backward (``lightdvae::lstm_layer_backward(grad_out, x, w_ih, w_hh, ...)``): as
    ATen's."""
    return lstm_layer_backward_flop(*args, **kwargs)


def lstm_flop_formulas() -> dict:
    """``custom_mapping`` of :class:`torch.utils.flop_counter.FlopCounterMode` for the CPU LSTM layers: ATen's
    (oneDNN's) and the package's (``lightdvae::lstm_layer``, the E-step's at batch <= 4; the same products)."""
    aten = torch.ops.aten
    formulas = {aten.mkldnn_rnn_layer: lstm_layer_flop, aten.mkldnn_rnn_layer_backward: lstm_layer_backward_flop}
    if hasattr(torch.ops.lightdvae, "lstm_layer"):
        formulas[torch.ops.lightdvae.lstm_layer] = lstm_layer_flop
        formulas[torch.ops.lightdvae.lstm_layer_backward] = native_lstm_backward_flop
    return formulas


def gflop_per_iteration(model, batch: list[torch.Tensor], **options) -> float:
    """GFLOP of one EM iteration of ``batch`` on the native path (two runs, 1 and 2 iterations, subtracted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for iterations in (1, 2):
        with FlopCounterMode(display=False, custom_mapping=lstm_flop_formulas()) as counter:
            enhance_batch(model, batch, iterations=iterations, **options)
        counts.append(counter.get_total_flops())
    return (counts[1] - counts[0]) / 1e9


def _median_ms(fn, rounds: int = 15) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[rounds // 2] * 1e3


def parts(name: str, seconds: float) -> dict[str, float]:
    """Median ms of the parts of one EM iteration of the transformer prior ``name`` at batch 1 (random weights,
    a random spectrogram of ``seconds``), each run alone."""
    from lightdvae.ops.sampling import exact_loops

    torch.manual_seed(0)
    model = build(name).eval()
    frames = int(seconds * SAMPLE_RATE) // 256 + 1
    feats = torch.randn(1, frames, 513)
    with torch.no_grad():
        w = model.encode_w(feats)[0]
        z = model.encode_z(feats, w)[0]

    def loop():
        with torch.no_grad(), exact_loops(False):
            model.decode_stepwise(w, frames, z=z, prior=False)

    def encoders_backward():
        w_mean, w_logvar = model.encode_w(feats)
        z_mean, z_logvar = model.encode_z(feats, w_mean)
        (w_mean.sum() + w_logvar.sum() + z_mean.sum() + z_logvar.sum()).backward()

    with torch.no_grad():
        past = torch.exp(model.decode_stepwise(w, frames, z=z, prior=False)["logvar"])

    def decoder_backward():  # the decoder is frozen in the E-step: gradients of z and w only
        zz, ww = z.clone().requires_grad_(), w.clone().requires_grad_()
        logvar, mean_p, logvar_p = model.decode(zz, ww, past)
        torch.autograd.grad(logvar.sum() + mean_p.sum() + logvar_p.sum(), [zz, ww])

    def encoders():
        with torch.no_grad():
            model.encode_z(feats, model.encode_w(feats)[0])

    times = {
        "decoding loop (x2 per iteration)": _median_ms(loop),
        "encoders forward + backward": _median_ms(encoders_backward),
        "encoders forward (sample pass)": _median_ms(encoders),
    }
    for p in model.parameters():
        p.requires_grad_(False)
    times["parallel decoder, input gradients"] = _median_ms(decoder_backward)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--priors", nargs="+", default=["dkf", "rvae", "srnn", "light-dvae", "hit-dvae"])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.5)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path; the fastest is reported (3)")
    parser.add_argument("--parts", action="store_true", help="time the parts of a transformer prior's iteration")
    parser.add_argument(
        "--latent-e-step", action="store_true", help="the native paths with the latent E-step (the reference's stays)"
    )
    parser.add_argument(
        "--speech-past", default="own", choices=SPEECH_PASTS, help="with --latent-e-step: the decoders' past"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.parts:
        for name in [p for p in args.priors if p in ("light-dvae", "hit-dvae")]:
            for part, ms in parts(name, args.seconds).items():
                print(f"{name}: {part}: {ms:.1f} ms", flush=True)
        return
    data = waves(args.seconds, 16)
    if args.speech_past != "own" and not args.latent_e_step:
        parser.error("--speech-past estimate needs --latent-e-step")
    options = {"latent_e_step": True, "speech_past": args.speech_past} if args.latent_e_step else {}
    what = ", native paths with the latent E-step" if args.latent_e_step else ""
    what += ", estimated past" if args.speech_past == "estimate" else ""
    print(f"ms per EM iteration per utterance of {args.seconds:g} s, {torch.get_num_threads()} thread(s){what}\n")
    print(
        "| prior | reference, batch 1 | native, batch 1 | native, batch 16 (per batch) | native, batch 16 "
        "| GFLOP per iteration, batch 16 | GFLOP/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.priors:
        torch.manual_seed(0)
        model = build(name).eval()
        per_iteration(model, data[:1], 1, "auto")  # warm-up: first calls build caches
        ref, one, many = interleaved(
            [
                partial(per_iteration, model, data[:1], args.iterations, "ref"),
                partial(per_iteration, model, data[:1], args.iterations, "auto", **options),
                partial(per_iteration, model, data, args.iterations, "auto", **options),
            ],
            args.repeats,
        )
        gflop = gflop_per_iteration(model, data, **options)
        print(
            f"| {name} | {ref * 1e3:.1f} | {one * 1e3:.1f} ({ref / one:.1f}x) | {many * 1e3:.0f} "
            f"| {many / 16 * 1e3:.1f} ({ref / (many / 16):.1f}x) | {gflop:.1f} | {gflop / many:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
