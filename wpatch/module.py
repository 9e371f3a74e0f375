"""The LightningModule whose predict step runs every patch of a batch: sites x layer pairs x windows x alphas x directions."""

import math

import lightning as L
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from wpatch.decoding import cross_attention_cache, greedy_transcripts, language_probs, scoring_prefix, word_logprobs
from wpatch.errors import WpatchError
from wpatch.models import load_model
from wpatch.patching import SITES, Patch, layer_pairs, patched_outputs, run_patched, site_states, window_weights
from wpatch.text import has_word, is_word, tokenizer_for

ROW_COLUMNS = [
    "item_id", "pair_id", "direction", "category", "voice", "source_word", "target_word",
    "site", "source_layer", "target_layer", "window", "window_start", "window_end", "alpha", "patch_direction", "donor", "donor_word",
    "transcript", "override", "retained", "transfer", "logp_source", "logp_target", "score", "p_source_language",
    "source_recognised", "ld_source_clean", "ld_target_clean", "effect", "effect_valid",
]
DIRECTIONS = ("denoising", "noising")
MAX_ROWS_PER_PASS = 64  # patched encoder runs batched together (bounds activation memory)


def check_precision(precision: str, on_gpu: bool) -> None:
    """Refuse a precision the chosen accelerator cannot run Whisper under (Lightning would swap it silently)."""
    precision = str(precision)
    if not on_gpu and precision not in ("32-true", "32", "bf16-mixed"):
        raise WpatchError(f"precision {precision} is not supported on the CPU; use --trainer.precision 32-true (or bf16-mixed)")
    if on_gpu and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise WpatchError(f"precision {precision} needs a GPU with bfloat16 support; use --trainer.precision 16-mixed")


def graded_score(logp_source: float, logp_target: float) -> float:
    """p_source / (p_source + p_target), computed stably from the two log-probabilities."""
    gap = logp_target - logp_source
    return 1.0 / (1.0 + math.exp(gap)) if gap <= 0 else math.exp(-gap) / (1.0 + math.exp(-gap))


class PatchingModule(L.LightningModule):
    """Activation patching of Whisper's encoder over all layer pairs, with greedy and teacher-forced measures.

    The default is the original experiment: the whole output of block t replaced by the source clip's block-s
    output (site block_out, window all, alpha 1, denoising). Every list setting is swept in one run.

    Args:
        model: model spec (see `wpatch.models.load_model`).
        source_layers: donor blocks (default: all).
        target_layers: recipient blocks (default: all).
        sites: any of resid_pre, attn_out, mlp_out, block_out.
        windows: frame windows to patch: "all" (1500 frames), "word" (the frames where the source or target word
            is spoken), or [start, end] in encoder frames (20 ms each).
        sweep: [width, stride, end]: also patch sliding windows [k*stride, k*stride+width) below `end`, same layer
            only (s == t), for (layer x time) maps.
        alphas: interpolation weights: patched = (1 - alpha) * recipient + alpha * donor (1 = replacement).
        directions: denoising (source state into the target run, the original) and/or noising (target state into
            the source run).
        control: also patch from a random unrelated word (donor "control") beside the real donor.
        min_separation: rows whose clean runs separate the two words by less than this (nats of logp_source -
            logp_target) are flagged (effect_valid false, effect empty) instead of dividing by about zero.
        language: decoding language (e.g. en); None lets Whisper detect it (multilingual models).
        task: transcribe or translate.
        max_tokens: greedy decoding stops after this many tokens (single words need few).
        decode_chunk: encoder outputs decoded together; bounds the decoder's cross-attention cache (about
            64 x 18 MB for tiny, 64 x 37 MB for base); raise it on a large GPU.
    """

    def __init__(
        self,
        model: str = "tiny.en",
        source_layers: list[int] | None = None,
        target_layers: list[int] | None = None,
        sites: list[str] = ("block_out",),
        windows: list[str | list[int]] = ("all",),
        sweep: list[int] | None = None,
        alphas: list[float] = (1.0,),
        directions: list[str] = ("denoising",),
        control: bool = False,
        min_separation: float = 1.0,
        language: str | None = "en",
        task: str = "transcribe",
        max_tokens: int = 8,
        decode_chunk: int = 64,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.whisper = load_model(model)
        self.pairs = layer_pairs(self.whisper.dims.n_audio_layer, source_layers, target_layers)
        self.tokenizer = tokenizer_for(self.whisper.dims, language or "en", task)
        self.specs = patch_specs(self.pairs, list(sites), list(windows), sweep, list(alphas), self.whisper.dims.n_audio_ctx)
        for direction in directions:
            if direction not in DIRECTIONS:
                raise WpatchError(f"unknown patch direction {direction!r}; use denoising or noising")
        if not 1 <= max_tokens <= self.whisper.dims.n_text_ctx // 2:
            raise WpatchError(f"max_tokens {max_tokens} is outside 1..{self.whisper.dims.n_text_ctx // 2}; single words need about 8")
        if decode_chunk < 1:
            raise WpatchError(f"decode_chunk {decode_chunk} decodes nothing; give 1 or more encoder outputs per decoder pass")
        self.rows_per_item = len(self.specs) * len(directions) * (2 if control else 1)
        # a sparse, non-persistent buffer (used only for word timestamps) that DDP cannot broadcast
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["whisper.alignment_heads"])

    def prefix(self, lang: str) -> tuple[int, ...]:
        """The forced transcript start for scoring a word of language `lang` (the run's language if it has one)."""
        return scoring_prefix(tokenizer_for(self.whisper.dims, self.hparams.language or lang, self.hparams.task))

    def plan(self, batch: dict) -> list[dict]:
        """Every row of the batch: item, patch (window resolved; `whole` if it is the original recipient-free
        patch), direction, donor kind, recipient and donor clips."""
        n_ctx = self.whisper.dims.n_audio_ctx
        donors = ("source", "control") if self.hparams.control else ("source",)
        rows = []
        for b in range(len(batch["item_id"])):
            clip = {side: int(batch[f"{side}_clip"][b]) for side in ("source", "target", "control")}
            word_span = (int(min(batch["source_span"][b][0], batch["target_span"][b][0])), int(max(batch["source_span"][b][1], batch["target_span"][b][1])))
            for site, s, t, window, frames, alpha in self.specs:
                start, end = frames or {"all": (0, n_ctx), "word": word_span}[window]
                patch = Patch(site, s, t, start, end, alpha)
                for direction in self.hparams.directions:
                    recipient, real_donor = ("target", "source") if direction == "denoising" else ("source", "target")
                    for kind in donors:
                        donor = real_donor if kind == "source" else "control"
                        rows.append({"b": b, "patch": patch, "whole": patch.replaces_whole_block(n_ctx), "window": window,
                                     "direction": direction, "donor": donor, "recipient_clip": clip[recipient], "donor_clip": clip[donor]})
        return rows

    def predict_step(self, batch: dict, batch_idx: int = 0) -> list[dict]:
        """One row per item and patch (columns `ROW_COLUMNS`)."""
        plan = self.plan(batch)
        mels = {}
        for side in ("source", "target", "control"):
            for clip, mel in zip(batch[f"{side}_clip"].tolist(), batch[f"{side}_mel"]):
                mels.setdefault(clip, mel)
        needed = {c for side in ("source", "target") for c in batch[f"{side}_clip"].tolist()} | {r["donor_clip"] for r in plan}
        clips = sorted(needed)
        position = {clip: i for i, clip in enumerate(clips)}
        general_sites = {r["patch"].site for r in plan if not r["whole"]}
        sites = {"block_out"} | general_sites | ({"resid_pre"} if general_sites else set())
        with record_function("wpatch.encoder.clean"):
            states, clean = site_states(self.whisper.encoder, torch.stack([mels[c] for c in clips]), sites)
        with record_function("wpatch.encoder.patched"):
            features, index = self.patched_features(plan, states, clean, position)
        for r in plan:
            p = r["patch"]
            r["feature"] = index[("whole", r["donor_clip"], (p.source_layer, p.target_layer)) if r["whole"] else ("general", r["recipient_clip"], r["donor_clip"], p)]
        return self.measure(batch, plan, features, position)

    def patched_features(self, plan: list[dict], states: dict, clean: torch.Tensor, position: dict) -> tuple[torch.Tensor, dict]:
        """Every encoder output the plan needs, stacked: the clean runs first (in `position` order), then the
        whole-block patches, which depend only on the donor (key ("whole", donor, (s, t))), then the rest
        (("general", recipient, donor, patch)); returns them and the index from key to position."""
        encoder, n_ctx = self.whisper.encoder, self.whisper.dims.n_audio_ctx
        features, index = [clean], {}
        general = [r for r in plan if not r["whole"]]
        whole = [r for r in plan if r["whole"]]
        if whole:
            donors = sorted({r["donor_clip"] for r in whole})
            pairs = sorted({(r["patch"].source_layer, r["patch"].target_layer) for r in whole})
            rows_of = torch.tensor([position[c] for c in donors], device=clean.device)
            patched, slot = patched_outputs(encoder, [state[rows_of] for state in states["block_out"]], clean[rows_of], pairs)
            offset = sum(len(f) for f in features)
            features.append(patched.flatten(0, 1))
            for i, donor in enumerate(donors):
                for pair in pairs:
                    index[("whole", donor, pair)] = offset + i * patched.shape[1] + slot[pair]
        todo = {}
        for r in general:
            todo.setdefault((r["patch"].site, r["patch"].target_layer), {})[(r["recipient_clip"], r["donor_clip"], r["patch"])] = None
        for (site, t), keys in todo.items():
            keys = list(keys)
            for chunk in range(0, len(keys), MAX_ROWS_PER_PASS):
                part = keys[chunk : chunk + MAX_ROWS_PER_PASS]
                block_input = states["resid_pre"][t][[position[rec] for rec, _, _ in part]]
                donor = torch.stack([states[site][p.source_layer][position[don]] for _, don, p in part])
                weight = window_weights([p for _, _, p in part], n_ctx, clean.device)
                offset = sum(len(f) for f in features)
                features.append(run_patched(encoder, block_input, t, site, donor, weight))
                index.update({("general", *key): offset + i for i, key in enumerate(part)})
        return torch.cat([f.to(clean.dtype) for f in features]), index

    def measure(self, batch: dict, plan: list[dict], features: torch.Tensor, clean: dict) -> list[dict]:
        """Decode every feature once and turn the plan into rows of measures (`clean`: clip -> its clean feature)."""
        hp = self.hparams
        source_words = [(self.prefix(lang), tuple(map(tuple, forms))) for lang, forms in zip(batch["source_lang"], batch["source_tokens"])]
        target_words = [(self.prefix(lang), tuple(map(tuple, forms))) for lang, forms in zip(batch["target_lang"], batch["target_tokens"])]
        asked = [{} for _ in range(len(features))]
        for r in plan:
            b = r["b"]
            for f in (r["feature"], clean[int(batch["source_clip"][b])], clean[int(batch["target_clip"][b])]):
                asked[f].update(dict.fromkeys((source_words[b], target_words[b])))
        crosses_languages = any(a != b for a, b in zip(batch["source_lang"], batch["target_lang"]))
        detect = self.whisper.is_multilingual and (hp.language is None or crosses_languages)
        transcripts, logp, lang_probs = [], [], []
        for chunk in (slice(i, i + hp.decode_chunk) for i in range(0, len(features), hp.decode_chunk)):
            with record_function("wpatch.decoder.cross_attention"):
                cross = cross_attention_cache(self.whisper, features[chunk])
            with record_function("wpatch.decoder.language"):
                probs = language_probs(self.whisper, cross, self.tokenizer) if detect else []
                lang_probs += probs
            with record_function("wpatch.decoder.greedy"):
                language = hp.language or ([max(p, key=p.get) for p in probs] if self.whisper.is_multilingual else "en")
                transcripts += greedy_transcripts(self.whisper, cross, language, hp.task, hp.max_tokens)
            with record_function("wpatch.decoder.score"):
                logp += word_logprobs(self.whisper, cross, [list(words) for words in asked[chunk]])

        rows = []
        for r in plan:
            b, p, f = r["b"], r["patch"], r["feature"]
            source, target = batch["source_word"][b], batch["target_word"][b]
            source_lang, target_lang = batch["source_lang"][b], batch["target_lang"][b]
            lp_s, lp_t = logp[f][source_words[b]], logp[f][target_words[b]]
            clean_s, clean_t = (clean[int(batch[f"{side}_clip"][b])] for side in ("source", "target"))
            ld_source = logp[clean_s][source_words[b]] - logp[clean_s][target_words[b]]
            ld_target = logp[clean_t][source_words[b]] - logp[clean_t][target_words[b]]
            valid = ld_source - ld_target >= self.hparams.min_separation
            p_lang = float("nan")
            if lang_probs and source_lang != target_lang:
                p_src, p_tgt = lang_probs[f].get(source_lang, 0.0), lang_probs[f].get(target_lang, 0.0)
                p_lang = p_src / (p_src + p_tgt) if p_src + p_tgt > 0 else float("nan")
            text = transcripts[f]
            rows.append({
                "item_id": int(batch["item_id"][b]), "pair_id": batch["pair_id"][b], "direction": batch["direction"][b],
                "category": batch["category"][b], "voice": batch["voice"][b], "source_word": batch["source_word"][b],
                "target_word": batch["target_word"][b], "site": p.site, "source_layer": p.source_layer, "target_layer": p.target_layer,
                "window": r["window"], "window_start": p.start, "window_end": p.end, "alpha": p.alpha, "patch_direction": r["direction"], "donor": r["donor"],
                "donor_word": batch[f"{r['donor']}_word"][b], "transcript": transcripts[f],
                "override": is_word(text, source), "retained": is_word(text, target), "transfer": has_word(text, source),
                "logp_source": lp_s, "logp_target": lp_t, "score": graded_score(lp_s, lp_t), "p_source_language": p_lang,
                "source_recognised": is_word(transcripts[clean_s], source), "ld_source_clean": ld_source, "ld_target_clean": ld_target,
                "effect": (lp_s - lp_t - ld_target) / (ld_source - ld_target) if valid else float("nan"), "effect_valid": valid,
            })
        return rows


def patch_specs(pairs, sites, windows, sweep, alphas, n_ctx) -> list[tuple]:
    """(site, s, t, window label, frames, alpha) for every setting combination; frames is None where they
    depend on the item (all, word). Sweep windows (label "sweep") are for same-layer pairs only."""
    for site in sites:
        if site not in SITES:
            raise WpatchError(f"unknown patch site {site!r}; use one of {', '.join(SITES)}")
    for window in windows:
        if window not in ("all", "word") and not (isinstance(window, (list, tuple)) and len(window) == 2 and 0 <= window[0] < window[1] <= n_ctx):
            raise WpatchError(f"window {window!r} is not all, word or [start, end] with 0 <= start < end <= {n_ctx}")
    for alpha in alphas:
        if not 0.0 <= alpha <= 1.0:
            raise WpatchError(f"alpha {alpha} is outside [0, 1]; 0 leaves the recipient unchanged, 1 replaces it")
    resolved = [(w, None) if isinstance(w, str) else (f"{int(w[0])}-{int(w[1])}", (int(w[0]), int(w[1]))) for w in windows]
    specs = [(site, s, t, label, frames, alpha) for site in sites for s, t in pairs for label, frames in resolved for alpha in alphas]
    if sweep:
        width, stride, end = sweep
        if width < 1 or stride < 1 or not 0 < end <= n_ctx:
            raise WpatchError(f"sweep {sweep} needs width >= 1, stride >= 1 and 0 < end <= {n_ctx}")
        starts = range(0, max(1, end - width + 1), stride)
        specs += [(site, s, t, "sweep", (a, min(a + width, n_ctx)), alpha) for site in sites for s, t in pairs if s == t for a in starts for alpha in alphas]
    return list(dict.fromkeys(specs))
