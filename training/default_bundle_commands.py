"""The command lines that build the default bundle, stage by stage (argv without the program
name, run in one working directory); :mod:`fringelive.training.build_default_bundle` runs them
and says what each stage is for. Data only: no I/O."""

from __future__ import annotations

BENCHMARK = "heldout_423e"
BENCHMARK_ABTEM = "heldout_abtem_423e"
NAME = "default-sim-au-0.02nm"
DESCRIPTION = ("Default model: the published residual UNet trained on fast synthetic HRTEM frames "
               "(fringelive synth --engine fast, not multislice) of 3-8 nm Au particles at 0.02 nm/pixel and "
               "300-700 e/A^2. A starting point for the demo and for fine-tuning, not a substitute for a model "
               "trained on your conditions.")
DESCRIPTION_FINETUNED = ("Default model: the published residual UNet trained on fast synthetic HRTEM frames, then "
                         "fine-tuned on those plus abTEM multislice simulations, of 3-8 nm Au particles on amorphous "
                         "carbon at 0.02 nm/pixel and 300-700 e/A^2 (300 kV). A starting point for the demo and for "
                         "fine-tuning, not a substitute for a model trained on your conditions.")


def commands(*, train_frames: int = 32, heldout_frames: int = 6, frame_px: int = 1024, patch: int = 256,
             epochs: int = 6, batch_size: int = 8, lr: float = 1e-3, seed: int = 0, abtem_frames: int = 72,
             abtem_heldout_frames: int = 12, abtem_px: int = 512, finetune_epochs: int = 6,
             finetune_lr: float = 3e-4, calib_frames: int = 120) -> list[list[str]]:
    """The eight command lines (argv without the program name), run in the working directory."""
    return [
        ["synth", "--engine", "fast", "--count", str(train_frames), "--size", str(frame_px), "--pixel-size", "0.02",
         "--diameter", "3", "8", "--dose", "300", "700", "--seed", str(seed), "--out", "train"],
        ["synth", "--engine", "fast", "--count", str(heldout_frames), "--size", str(frame_px), "--pixel-size", "0.02",
         "--diameter", "3", "8", "--dose", "423", "--seed", str(seed + 1000), "--out", "heldout"],
        ["train", "--data", "train", "--out", "run", "--folds", "1", "--split", "0.9", "0.1", "0",
         "--patch", str(patch), "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", f"{lr:g}",
         "--lr-schedule", "cosine", "--lr-min", "1e-05", "--noise-rho-max", "0.3", "--seed", str(seed),
         "--benchmark", f"{BENCHMARK}=heldout", "--select-metric", "pooled_dice", "--bundle-name", "default-fastsim-au-0.02nm",
         "--description", DESCRIPTION],
        ["synth", "--engine", "abtem", "--count", str(abtem_frames), "--size", str(abtem_px), "--pixel-size", "0.02",
         "--diameter", "3", "8", "--particles", "1", "2", "--twin-probability", "0.2", "--dose", "300", "700",
         "--seed", str(seed + 100), "--workers", "2", "--no-progress", "--out", "abtem-train"],
        ["synth", "--engine", "abtem", "--count", str(abtem_heldout_frames), "--size", str(abtem_px), "--pixel-size",
         "0.02", "--diameter", "3", "8", "--particles", "1", "2", "--twin-probability", "0.2", "--dose", "423",
         "--seed", str(seed + 2000), "--workers", "2", "--no-progress", "--out", "abtem-heldout"],
        ["finetune", "--from", "run/bundle", "--data", "train", "abtem-train", "--out", "finetune", "--folds", "1",
         "--split", "0.9", "0.1", "0", "--patch", str(patch), "--epochs", str(finetune_epochs), "--batch-size",
         str(batch_size), "--lr", f"{finetune_lr:g}", "--lr-schedule", "cosine", "--lr-min", "1e-05",
         "--noise-rho-max", "0.3", "--seed", str(seed), "--benchmark", f"{BENCHMARK}=heldout", "--benchmark",
         f"{BENCHMARK_ABTEM}=abtem-heldout", "--select-metric", "pooled_dice", "--bundle-name", NAME,
         "--description", DESCRIPTION_FINETUNED, "--no-calibrate"],
        ["synth", "--engine", "fast", "--count", str(calib_frames), "--size", str(abtem_px), "--pixel-size", "0.02",
         "--diameter", "3", "8", "--dose", "300", "700", "--seed", str(seed + 3000), "--out", "calib"],
        ["calibrate", "--bundle", "finetune/bundle", "calib", "abtem-train", "abtem-heldout",
         "--seed", str(seed)],
    ]


CURATED_NAME = "default-curated-v2"
#: the shipped default (stage 8)
DEFAULT_NAME = "default-curated-v8"
DESCRIPTION_CURATED = (
    "Default model: the published residual UNet fine-tuned on a curated abTEM multislice database "
    "(fringelive synth --preset curated): Au, Ag, Pt, CdSe particles 1.5-12 nm at random orientation with twins and "
    "stacking faults, bare and no-support frames, amorphous carbon 2-12 nm, defocus -15..15 nm, corrected and "
    "uncorrected Cs, 200/300 kV, 0.012-0.046 nm/pixel, 50-3000 e/A^2, varied cameras. A starting point, not a "
    "substitute for a model trained on your conditions.")
#: The held-out camera (never in the database): gain 8 counts/e, offset 100, read noise 30 counts,
#: detector blur σ 1 px, 40 % illumination gradient.
HELD_OUT_CAMERA = ["--gain", "8", "--offset", "100", "--read-noise", "30", "--mtf-sigma", "1.0",
                   "--illumination", "0.4"]


#: The curated preset as stages 2 and 3 ran it: one carbon unit slab per grid for every database
#: (the preset's ``support_pool`` was added later, for stage 4).
_SYNTH_CURATED_V3 = ["synth", "--preset", "curated", "--support-pool", "1"]


def curated_commands(*, epochs: int = 6, lr: float = 3e-4, seed: int = 0) -> list[list[str]]:
    """Stage 2: the curated database, the held-out sets and the fine-tune of ``finetune/bundle``."""
    cam = HELD_OUT_CAMERA
    return [
        [*_SYNTH_CURATED_V3, "--count", "300", "--seed", "1000", "--workers", "2", "--no-progress",
         "--out", "cur_0"],
        [*_SYNTH_CURATED_V3, "--count", "143", "--seed", "1001", "--workers", "2", "--no-progress",
         "--out", "cur_1p"],
        ["synth", "--engine", "abtem", "--count", "24", "--size", "512", "--pixel-size", "0.02", "--material", "Au",
         "--diameter", "3", "6", "--particles", "1", "2", "--carbon-thickness", "3", "6", "--defocus", "-6", "6",
         "--cs", "-30", "30", "--dose", "423", "--twin-probability", "0.3", *cam, "--seed", "9001", "--workers", "1",
         "--no-progress", "--out", "eval_accept_au"],
        ["synth", "--engine", "abtem", "--count", "24", "--size", "512", "--pixel-size", "0.02", "--material", "Au",
         "--particles", "0", "0", "--carbon-thickness", "3", "10", "--defocus", "-10", "10", "--cs", "-30", "30",
         "--dose", "200", "900", "--sampling", "0.2", "--mask-pass", "shared", *cam, "--seed", "9012",
         "--workers", "1", "--no-progress", "--out", "eval_bare"],
        [*_SYNTH_CURATED_V3, "--count", "60", "--pixel-size", "0.013", "0.042", "--dose", "200", "2000",
         "--material", "Au", "Ag", "Pt", "--particles", "1", "3", "--empty-fraction", "0", "--diameter", "2", "10",
         "--no-support-fraction", "0", "--carbon-thickness", "2", "10", *cam, "--seed", "9003", "--workers", "1",
         "--no-progress", "--out", "eval_bands"],
        ["finetune", "--from", "finetune/bundle", "--data", "cur_0", "cur_1p", "--out", "ft1", "--folds", "1",
         "--split", "0.92", "0.08", "0", "--patch", "256", "--epochs", str(epochs), "--batch-size", "8",
         "--lr", f"{lr:g}", "--lr-schedule", "cosine", "--lr-min", "1e-05", "--noise-rho-max", "0.3",
         "--seed", str(seed), "--benchmark", "accept_au=eval_accept_au", "--benchmark", "bare_support=eval_bare",
         "--select-metric", "last", "--bundle-name", CURATED_NAME, "--description", DESCRIPTION_CURATED,
         "--no-calibrate", "--no-progress"],
        ["calibrate", "--bundle", "ft1/bundle", "eval_bands", "eval_bare", "eval_accept_au", "--no-dose-calibration",
         "--seed", str(seed)],
    ]


def stage3_commands(*, epochs: int = 3, lr: float = 2e-4, seed: int = 0) -> list[list[str]]:
    """Stage 3: more curated data, the fine-tune of ``ft1/bundle`` with per-condition benchmarks,
    the threshold (on ``cur_val``, never a reported set) and the drift reference."""
    return [
        [*_SYNTH_CURATED_V3, "--count", "300", "--seed", "1001", "--workers", "2", "--no-progress",
         "--out", "cur_1"],
        [*_SYNTH_CURATED_V3, "--count", "300", "--seed", "1002", "--dose", "100", "2500", "--material",
         "Au", "Ag", "Pt", "--workers", "2", "--no-progress", "--out", "cur_2"],
        [*_SYNTH_CURATED_V3, "--count", "300", "--seed", "1003", "--workers", "2", "--no-progress",
         "--out", "cur_3"],
        [*_SYNTH_CURATED_V3, "--count", "60", "--seed", "1100", "--workers", "1", "--no-progress",
         "--out", "cur_val"],
        ["finetune", "--from", "ft1/bundle", "--data", "cur_0", "cur_1", "cur_2",
         "cur_3", "--out", "ft3", "--folds", "1", "--split", "0.94", "0.06", "0", "--patch", "256", "--epochs",
         str(epochs), "--batch-size", "8", "--lr", f"{lr:g}", "--lr-schedule", "cosine", "--lr-min", "1e-5",
         "--noise-rho-max", "0.3", "--seed", str(seed), "--benchmark", "accept_au=eval_accept_au", "--benchmark",
         "bare_support=eval_bare", "--benchmark", "bands=eval_bands", "--benchmark-by", "pixel_size_nm=0.02,0.03",
         "--benchmark-by", "dose_e_per_A2=500,1000", "--benchmark-by", "material", "--select-metric", "last",
         "--bundle-name", "default-curated-v3", "--description", DESCRIPTION_CURATED, "--no-calibrate", "--no-progress"],
        ["calibrate", "--bundle", "ft3/bundle", "eval_bands", "eval_bare", "eval_accept_au", "--choose-threshold",
         "cur_val", "--no-dose-calibration", "--seed", str(seed)],
    ]


def _finetune(source: str, data: list[str], out: str, *, bands: str, name: str, seed: int, epochs: int = 2,
              extra: tuple[str, ...] = ("--noise-rho-max", "0.3"), description: str | None = None) -> list[str]:
    """Stages 4–8's fine-tune: ``epochs`` epochs, cosine 1e-4 → 1e-5, per-condition benchmarks on
    the held-out sets (``bands``: the bands set), the last epoch kept, no drift reference yet;
    ``extra`` options (default: white-noise augmentation)."""
    return ["finetune", "--from", source, "--data", *data, "--out", out, "--folds", "1", "--split", "0.95", "0.05",
            "0", "--patch", "256", "--batch-size", "8", "--lr-schedule", "cosine", "--lr-min", "1e-5",
            *extra, "--epochs", str(epochs), "--lr", "0.0001", "--seed", str(seed),
            "--benchmark", "accept_au=eval_accept_au", "--benchmark", "bare_support=eval_bare",
            "--benchmark", f"bands={bands}", "--benchmark-by", "pixel_size_nm=0.02,0.03",
            "--benchmark-by", "dose_e_per_A2=500,1000", "--benchmark-by", "material", "--select-metric", "last",
            "--bundle-name", name, "--description", description or DESCRIPTION_CURATED, "--no-calibrate",
            "--no-progress"]

#: The curated distributions with every frame's amorphous carbon simulated anew (no support
#: reuse: full band-limited multislice at 0.25 Å), 40 % bare frames (stages 5 and 6).
_SYNTH_RANDOM_CARBON = [
    "synth", "--engine", "abtem", "--size", "512", "--pixel-size", "0.012", "0.046", "--dose", "50", "3000",
    "--log-uniform", "pixel-size", "dose", "diameter", "carbon-thickness", "--material", "Au", "Ag", "Pt", "CdSe",
    "--diameter", "1.5", "12", "--particles", "0", "3", "--empty-fraction", "0.4", "--twin-probability", "0.3",
    "--stacking-fault-probability", "0.25", "--edge-overlap", "--carbon-thickness", "2", "12",
    "--no-support-fraction", "0.03", "--voltage", "300", "300", "200", "--defocus", "-15", "15", "--cs", "-30", "30",
    "--uncorrected-fraction", "0.2", "--cs-uncorrected", "0.5", "1.2", "--focal-spread", "2", "6",
    "--angular-spread", "0.05", "0.5", "--sampling", "0.25", "--slice-thickness", "2", "--mask-pass", "shared"]
#: The preset's camera ranges (stage 5) and the wider ones of stage 6: read noise to 40 counts,
#: detector blur to σ 1.3 px, 50 % illumination gradients, gain to 12 counts/e, offset to 800.
_CAMERA_CURATED = ["--gain", "0.5", "10", "--offset", "0", "500", "--illumination", "0", "0.3", "--read-noise", "0",
                   "20", "--mtf-sigma", "0", "0.8"]
_CAMERA_WIDE = ["--gain", "0.5", "12", "--offset", "0", "800", "--illumination", "0", "0.5", "--read-noise", "0",
                "40", "--mtf-sigma", "0", "1.3"]
#: Stage 4's fresh-carbon frames (the preset's pool of 4 carbon slabs seeded per database) and
#: stage 5's share of them: the first 1,600 / 900 of ``--seed 2000`` (a sample depends only on the
#: seed and its index, so the shorter run gives the same frames).
_SYNTH_FRESH_CARBON = ["synth", "--preset", "curated", "--seed", "2000", "--dose", "100", "2500", "--material", "Au",
                       "Ag", "Pt", "--empty-fraction", "0.25", "--workers", "2", "--no-progress"]


def _bare_random_carbon(camera: list[str], *, seed: str, out: str) -> list[str]:
    """24 frames of random carbon without particles (0.2 Å multislice) through ``camera``'s
    ranges: a threshold-choice set, never a reported one."""
    return ["synth", "--engine", "abtem", "--count", "24", "--size", "512", "--pixel-size", "0.013", "0.042",
            "--material", "Au", "--particles", "0", "0", "--carbon-thickness", "2", "12", "--defocus", "-15", "15",
            "--cs", "-30", "30", "--dose", "100", "2500", "--sampling", "0.2", "--mask-pass", "shared", *camera,
            "--seed", seed, "--workers", "2", "--no-progress", "--out", out]


def stage4_commands(*, seed: int = 0) -> list[list[str]]:
    """Stage 4: curated frames whose carbon is new to the model (``--support-pool 4``), a quarter
    bare; the fine-tune of ``ft3/bundle`` (not shipped: its threshold choice on curated frames
    picked 0.3, too low for fully random carbon); its threshold-choice set ``cur_val4``; the
    held-out bands with carbon no training set used (``eval_bands4``)."""
    return [
        [*_SYNTH_FRESH_CARBON, "--count", "1600", "--out", "cur_p4"],
        ["synth", "--preset", "curated", "--count", "60", "--seed", "1101", "--workers", "1", "--no-progress",
         "--out", "cur_val4"],
        ["synth", "--preset", "curated", "--count", "60", "--pixel-size", "0.013", "0.042", "--dose", "200", "2000",
         "--material", "Au", "Ag", "Pt", "--particles", "1", "3", "--empty-fraction", "0", "--diameter", "2", "10",
         "--no-support-fraction", "0", "--carbon-thickness", "2", "10", *HELD_OUT_CAMERA, "--seed", "9103",
         "--workers", "1", "--no-progress", "--out", "eval_bands4"],
        _finetune("ft3/bundle", ["cur_p4", "cur_2"], "ft4", bands="eval_bands", name="default-curated-v4", seed=seed),
    ]


def stage5_commands(*, seed: int = 0) -> list[list[str]]:
    """Stage 5: frames with fully random carbon (``rnd5``, the preset's camera ranges) and 900
    fresh-carbon curated frames; the fine-tune of ``ft4/bundle``; random-carbon bare frames for
    the threshold choice (``cur_valbare``, never a reported set)."""
    return [
        [*_SYNTH_FRESH_CARBON, "--count", "900", "--out", "cur_p9"],
        [*_SYNTH_RANDOM_CARBON, *_CAMERA_CURATED, "--count", "480", "--seed", "3000", "--workers", "2",
         "--no-progress", "--out", "rnd5"],
        _bare_random_carbon(_CAMERA_CURATED, seed="1102", out="cur_valbare"),
        _finetune("ft4/bundle", ["rnd5", "cur_p9"], "ft5", bands="eval_bands4", name="default-curated-v5", seed=seed),
    ]


def stage6_commands(*, seed: int = 0) -> list[list[str]]:
    """Stage 6 (shipped): random-carbon frames from wider camera ranges (``rnd6``) with ``rnd5``;
    the fine-tune of ``ft5/bundle``; the threshold chosen on ``cur_val4``, ``cur_valbare`` and
    ``cur_valbare6`` (bare random carbon through the wider cameras) with the per-frame budget, then
    the drift reference."""
    return [
        [*_SYNTH_RANDOM_CARBON, *_CAMERA_WIDE, "--count", "400", "--seed", "3001", "--workers", "2",
         "--no-progress", "--out", "rnd6"],
        _bare_random_carbon(_CAMERA_WIDE, seed="1103", out="cur_valbare6"),
        _finetune("ft5/bundle", ["rnd6", "rnd5"], "ft6", bands="eval_bands4", name="default-curated-v6", seed=seed),
        _calibrate("ft6/bundle", seed=seed),
    ]


def _calibrate(bundle: str, *, seed: int) -> list[str]:
    """The threshold chosen on ``cur_val4``, ``cur_valbare`` and ``cur_valbare6`` with the
    per-frame budget, then the drift reference."""
    return ["calibrate", "--bundle", bundle, "eval_bands", "eval_bare", "eval_accept_au", "--choose-threshold",
            "cur_val4", "--choose-threshold", "cur_valbare", "--choose-threshold", "cur_valbare6",
            "--no-dose-calibration", "--seed", str(seed)]


def _replace_options(argv: list[str], values: dict[str, list[str]]) -> list[str]:
    """``argv`` with the values of the options in ``values`` replaced (each option present once)."""
    out = list(argv)
    for option, new in values.items():
        i = out.index(option) + 1
        j = i
        while j < len(out) and not out[j].startswith("--"):
            j += 1
        out[i:j] = new
    return out


#: Stage 7's data: the weak bands of stage 6 (150–700 e/Å², Ag/Au/Pt), particles in 85 % of frames.
_SYNTH_WEAK_BANDS = _replace_options(_SYNTH_RANDOM_CARBON, {"--dose": ["150", "700"], "--material": ["Ag", "Au", "Pt"],
                                                           "--empty-fraction": ["0.15"]})
#: σ (px) of the low-pass that ends the preprocessing from stage 8 on (card ``lowpass_sigma_px``)
LOWPASS_SIGMA_PX = 1.0
DESCRIPTION_LOWPASS = DESCRIPTION_CURATED.replace(
    "varied cameras.", "varied cameras; preprocessing ends with a 1 px Gaussian low-pass that removes camera noise "
    "texture.")


def stage8_commands(*, seed: int = 0) -> list[list[str]]:
    """Stage 8 (shipped): the weak-band frames (``rnd7``, stage 7's data; stage 7's own fine-tune
    without the low-pass was not shipped) with ``rnd6`` and ``rnd5``; ``ft6/bundle`` fine-tuned
    for 3 epochs with the 1 px low-pass in its preprocessing and without noise augmentation (the
    run predates low-passing that noise like the frames); then the threshold choice and the
    drift reference as in stage 6."""
    return [
        [*_SYNTH_WEAK_BANDS, *_CAMERA_WIDE, "--count", "500", "--seed", "3002", "--workers", "2", "--no-progress",
         "--out", "rnd7"],
        _finetune("ft6/bundle", ["rnd6", "rnd5", "rnd7"], "ft8", bands="eval_bands4", name=DEFAULT_NAME, seed=seed,
                  epochs=3, extra=("--lowpass-sigma", str(LOWPASS_SIGMA_PX)), description=DESCRIPTION_LOWPASS),
        _calibrate("ft8/bundle", seed=seed),
    ]


#: the two cameras no training or reported set used, for the particle-core choice sets
_CAMERA_HELD_OUT_A = ["--gain", "5", "--offset", "400", "--read-noise", "20", "--mtf-sigma", "0.85", "--illumination", "0.35"]
_CAMERA_HELD_OUT_B = ["--gain", "1.7", "--offset", "50", "--read-noise", "6", "--mtf-sigma", "0.5", "--illumination", "0.15"]
_ENVELOPE = ["--pixel-size", "0.013", "0.042", "--dose", "200", "2000", "--material", "Au", "Ag", "Pt"]
#: the acceptance's structure (issue #11) across the envelope, random carbon (0.25 Å multislice)
_SYNTH_ACCEPTANCE_STRUCTURE = [
    "synth", "--engine", "abtem", "--count", "48", "--size", "512", *_ENVELOPE, "--log-uniform", "pixel-size", "dose",
    "--diameter", "3", "6", "--particles", "0", "2", "--empty-fraction", "0.1", "--twin-probability", "0.3",
    "--stacking-fault-probability", "0.1", "--carbon-thickness", "3", "6", "--voltage", "300", "--defocus", "-6", "6",
    "--cs", "-30", "30", "--focal-spread", "2", "4", "--sampling", "0.25", "--slice-thickness", "2", "--mask-pass",
    "shared", "--workers", "2", "--no-progress"]
_SYNTH_BROAD = ["synth", "--preset", "curated", "--count", "48", *_ENVELOPE, "--log-uniform", "pixel-size", "dose",
                "--particles", "0", "3", "--empty-fraction", "0.15", "--diameter", "2.5", "8", "--carbon-thickness", "2",
                "10", "--workers", "2", "--no-progress"]


def core_commands(*, seed: int = 0) -> list[list[str]]:
    """The last step of stage 8 (shipped): the confident core (``card.particle_min_core_nm``)
    chosen on 272 labelled frames no training or reported set holds: the envelope through the
    database's camera ranges (``cur_valenv``), broad conditions and the acceptance's structure
    each through two cameras nothing else used (``cur_valcamA/B``, ``cur_valaccA/B``); then the
    drift reference again (the published mask changed)."""
    return [
        ["synth", "--preset", "curated", "--count", "80", *_ENVELOPE, "--particles", "0", "3", "--empty-fraction",
         "0.15", "--diameter", "2", "10", "--carbon-thickness", "2", "10", *_CAMERA_WIDE, "--seed", "1104",
         "--workers", "1", "--no-progress", "--out", "cur_valenv"],
        [*_SYNTH_BROAD, *_CAMERA_HELD_OUT_A, "--seed", "1105", "--out", "cur_valcamA"],
        [*_SYNTH_BROAD, *_CAMERA_HELD_OUT_B, "--seed", "1106", "--out", "cur_valcamB"],
        [*_SYNTH_ACCEPTANCE_STRUCTURE, *_CAMERA_HELD_OUT_A, "--seed", "1107", "--out", "cur_valaccA"],
        [*_SYNTH_ACCEPTANCE_STRUCTURE, *_CAMERA_HELD_OUT_B, "--seed", "1108", "--out", "cur_valaccB"],
        ["calibrate", "--bundle", "ft8/bundle", "eval_bands", "eval_bare", "eval_accept_au",
         *[a for s in CHOICE_SETS for a in ("--choose-particle-core", s)], "--no-dose-calibration", "--seed",
         str(seed)],
    ]


#: the five choice sets of the particle rules (``core_commands``)
CHOICE_SETS = ("cur_valenv", "cur_valcamA", "cur_valcamB", "cur_valaccA", "cur_valaccB")


def core_share_commands(*, seed: int = 0) -> list[list[str]]:
    """After the core's diameter (shipped): on the same five choice sets, the share of a
    component its sure core must cover (``card.particle_min_core_fraction``), then that share for
    the components touching the frame edge (``card.particle_min_edge_core_fraction``), each with
    the card's other rules held; then the drift reference again."""
    return [["calibrate", "--bundle", "ft8/bundle", "eval_bands", "eval_bare", "eval_accept_au",
             *[a for s in CHOICE_SETS for a in ("--choose-particle-core-fraction", s)],
             *[a for s in CHOICE_SETS for a in ("--choose-particle-edge-core-fraction", s)],
             "--no-dose-calibration", "--seed", str(seed)]]


def all_commands(**kwargs: object) -> list[list[str]]:
    """Every stage's command lines, in order."""
    return (commands(**kwargs) + curated_commands() + stage3_commands() + stage4_commands()  # type: ignore[arg-type]
            + stage5_commands() + stage6_commands() + stage8_commands() + core_commands() + core_share_commands())
