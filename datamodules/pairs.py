"""A LightningDataModule that serves batches of log-mel pairs (source clip, target clip) for patching.

Reusable on its own::

    dm = PairDataModule(pairs_file="pairs.csv", model="tiny.en")
    dm.prepare_data(); dm.setup("predict")
    for batch in dm.predict_dataloader(): ...
"""

import logging
import random
import time
from operator import attrgetter
from pathlib import Path
from typing import Literal

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from datamodules.clip_keys import ClipKey, clip_key
from datamodules.shards import parse_shard, shard_of
from wpatch.errors import WpatchError
from wpatch.faults import fault_point
from wpatch.models.loading import cache_root, check_languages, load_model, model_dims, multilingual
from wpatch.models.wav2vec2 import CTCDims
from wpatch.patching.autobatch import DEFAULT_BATCH, auto_batch
from wpatch.rows import BatchSide, PairBatch
from wpatch.run_summary import Recorded
from wpatch.sides import ROLES, Side, passing_values
from wpatch.stimuli.audio import load_audio
from wpatch.stimuli.carriers import ALIGNMENT, sentence, word_frames
from wpatch.stimuli.clip_progress import each_clip
from wpatch.stimuli.contexts import RECORDED, recorded_frames
from wpatch.stimuli.melcache import MelStore
from wpatch.stimuli.pairs_file import check_word_tokens, pairs_path, patch_items, read_pairs, silent_clips
from wpatch.stimuli.screening import SCREEN_COLUMNS, cached_screen
from wpatch.stimuli.spans import cut_span
from wpatch.stimuli.tts import ClipCache, make_backend, parse_speaker
from wpatch.stimuli.voice_choice import BEST, CANDIDATES, Text, check_best, choose_voices
from wpatch.stimuli.waveforms import waveforms
from wpatch.text import tokenizer_for, written_tokens

log = logging.getLogger(__name__)
REQUIRE_HEARD = ("none", "source", "both")
PADDING = -1  # a source-clip group of no items: the empty batch of a process left without clips (a late resume)


class PairDataModule(L.LightningDataModule):
    """Pairs of words as batches of log-mels, token ids and metadata.

    Args:
        pairs_file: CSV of pairs (see `wpatch.stimuli.pairs_file`); None = the packaged starter set.
        limit: keep the first `limit` pairs.
        bidirectional: serve A into B and B into A (the original design), else A into B only.
        model: model spec; only its dimensions are read (n_mels, vocabulary).
        tts: speaker(s) for words without a recording: a backend (hibari, kokoro, espeak, piper, gtts) or a
            backend and voice (kokoro:af_heart), or a list of them to run the same set with several speakers
            (items repeat per speaker; the `voice` column tells them apart); `best`: per clip, the first voice of
            `wpatch.stimuli.voice_choice.CANDIDATES` whose clip the run's model hears (`source_voice`, `target_voice`
            say which; summary.json's `voice_choice` lists the words no voice made heard).
        voices: language -> voice, e.g. {en: en-us+m3, es: es}, for every backend; `backend.lang` keys
            (e.g. {piper.en: en_US-joe-medium}) for one backend only. Unset languages use a backend's defaults.
        cache_dir: where clips are cached (default ~/.cache/wpatch/clips).
        batch_size: source clips per batch when `group_by_source` (each with all its items), else items per batch;
            `auto`: the largest that fits the GPU's memory, and the module's decode chunk with it
            (`wpatch.patching.autobatch`; 16 on the CPU).
        group_by_source: serve every item that shares a source clip in the same batch, so work that depends
            only on the source (the whole-block patch) is done once per clip, on one process.
        require_heard: none (keep every item), source (keep items whose clean source clip the model hears) or
            both (source and target heard); screened with `wpatch.stimuli.screening` on `model` (loaded for it). The
            counts kept and dropped are in `self.screening` (and the run's summary.json).
        shard: "I/N": run only shard I of N (0 <= I < N) of the items (`shard_of`): the items whose source clip
            falls in it, with their item ids and control donors as in the whole run, so that `wpatch merge` of
            the N shards' runs equals the whole run.

    After `setup`, `items` holds one row per item: `item_id`, its `pair` (`wpatch.sides.Pair`), `direction`,
    `voice`, its `source`, `target` and `control` sides (`wpatch.sides.Side`) and their clip indices; `pairs` is
    the checked pairs table, read once (`read_pairs`).
    """

    def __init__(
        self,
        pairs_file: str | None = None,
        limit: int | None = None,
        bidirectional: bool = True,
        model: str = "tiny.en",
        tts: str | list[str] = "hibari",
        voices: dict[str, str] | None = None,
        cache_dir: str | None = None,
        batch_size: int | Literal["auto"] = DEFAULT_BATCH,
        group_by_source: bool = True,
        num_workers: int = 0,
        require_heard: str = "none",
        shard: str | None = None,
    ):
        super().__init__()
        if batch_size != "auto" and not (isinstance(batch_size, int) and batch_size >= 1):
            raise WpatchError(f"batch_size {batch_size!r} is not a positive number of clips or auto")
        if num_workers < 0:
            raise WpatchError(f"num_workers {num_workers} is negative; give 0 (load in this process) or more")
        self.shard = parse_shard(shard)
        self.save_hyperparameters()
        if require_heard not in REQUIRE_HEARD:
            raise WpatchError(
                f"require_heard {require_heard!r} is not one of {', '.join(REQUIRE_HEARD)}; use none, source or both"
            )
        root = Path(cache_dir) if cache_dir else cache_root() / "clips"
        self.screening_cache = root / "screening"  # screening results per model, beside the clips they are of
        self.span_root = root / "spans"  # words cut from longer recordings (`wpatch.stimuli.spans`)
        voices = voices or {}
        self.speakers = [tts] if isinstance(tts, str) else list(tts)  # the items repeat once per speaker
        chosen_among = [c for s in self.speakers if check_best(s) for lang in CANDIDATES for c in CANDIDATES[lang]]
        self.clips = {}  # speaker -> its clip cache (`best`'s candidate voices included)
        for speaker in dict.fromkeys(s for s in [*self.speakers, *chosen_among] if s != BEST):
            name, own = parse_speaker(speaker)
            backend = make_backend(name)
            mine = {k: v for k, v in voices.items() if "." not in k} | {
                k.split(".", 1)[1]: v for k, v in voices.items() if k.startswith(name + ".")
            }
            self.clips[speaker] = ClipCache(root, backend, mine | own)
        self.voice_choice = None  # `best`'s choice (`wpatch.stimuli.voice_choice.VoiceChoice`), set when keys resolve
        self.pairs = None  # the checked pairs table, read once (`read_pairs`)
        self.items = None
        self.mels = None
        self.samples = None  # a CTC model's clips' lengths (`self.mels` holds their input values), set by setup
        self.skipped: set[int] = set()
        self.screening: dict = {}
        self.stop_check = None  # called before each clip is synthesised; raises to stop (the writer's signal check)
        self.control_fallbacks = 0  # items without an unrelated control donor, set by setup
        self.items_total = None  # items of the whole run (all shards), set by setup
        self.silent_clips: list[
            dict
        ] = []  # clips without speech (`wpatch.stimuli.pairs_file.silent_clips`), set by setup
        self.word_frames: dict = {}  # how the word frames of words heard in context were found, set by setup

    def _clip_keys(self, items) -> list[list["ClipKey"]]:
        """The `ClipKey` of every source and target clip, in item order."""
        return [[clip_key(*item) for item in zip(items[role], items["pair"], items["voice"])] for role in ROLES]

    def read_pairs(self) -> pd.DataFrame:
        """The checked pairs table (`wpatch.stimuli.pairs_file.read_pairs`), read once and kept in `pairs`; a
        caller that has read the same file and limit already (the `wpatch` command, before any model loads) may
        set `pairs` instead."""
        if self.pairs is None:
            self.pairs = read_pairs(self.hparams.pairs_file, self.hparams.limit)
        return self.pairs

    def _read_items(self):
        """The patching items, repeated once per voice, numbered 0..n-1; a word the model's decoder cannot read
        is refused before any clip is made."""
        pairs = self.read_pairs()
        dims = model_dims(self.hparams.model)
        if not isinstance(dims, CTCDims):  # a CTC model's words are spelled by the module
            check_word_tokens(pairs, dims, pairs_path(self.hparams.pairs_file))
        items = patch_items(pairs, self.hparams.bidirectional)
        items = pd.concat([items.assign(voice=name) for name in self.speakers], ignore_index=True)
        items["item_id"] = range(len(items))
        return items

    def item_columns(self) -> pd.DataFrame:
        """Each item's own columns of predictions.csv, by item id (`wpatch.rows.ITEM_FIELDS` and what passes
        through from the pairs file, `wpatch.sides.passing_values`): the writer joins them to the rows."""
        return pd.DataFrame(
            {
                "item_id": item.item_id,
                "direction": item.direction,
                "voice": item.voice,
                "source_word": item.source.word,
                "target_word": item.target.word,
                **passing_values(item.pair, item.source, item.target),
                # the speaker whose clip each side was (`best` chooses per clip; "" for a recording)
                "source_voice": self.clip_keys[item.source_clip].voice,
                "target_voice": self.clip_keys[item.target_clip].voice,
            }
            for item in self.items.itertuples()
        )

    def _clip(self, key: "ClipKey") -> Path:
        if key.context_start:  # a recorded word in its context: the clip around it
            return cut_span(Path(key.audio), float(key.context_start), float(key.context_end), self.span_root)
        if key.start:
            return cut_span(Path(key.audio), float(key.start), float(key.end), self.span_root)
        return Path(key.audio) if key.audio else self.clips[key.voice].get(sentence(key.carrier, key.word), key.lang)

    def prepare_data(self):
        """Synthesise every clip that is not cached yet (runs once, on one process). `stop_check`, when set, is
        called before each clip: a run asked to stop (SIGTERM) stops between two clips, not after all of them. A line
        every few seconds says how far it is (`wpatch.stimuli.clip_progress`)."""
        items = self._read_items()
        unique = sorted({key for side in self._clip_keys(items) for key in side if not key.audio})
        start = time.perf_counter()
        unique = sorted(set(self._resolve_voices(unique)))
        choosing = sum(cache.synthesized for cache in self.clips.values())  # clips made to choose voices (`best`)
        if choosing:
            log.info(
                "--data.tts best: %d clips synthesised to choose the voices (%.1fs)",
                choosing,
                time.perf_counter() - start,
            )
        for lang, voice in sorted({(key.lang, key.voice) for key in unique}):
            self.clips[voice].backend.check_voice(self.clips[voice].voice(lang))
        start = time.perf_counter()
        made = 0
        for key in each_clip(unique, "clips", self.stop_check):
            self._clip(key)
            if sum(cache.synthesized for cache in self.clips.values()) - choosing > made:
                made += 1
                fault_point(f"synthesis{made}")
        log.info("clips: %d synthesised, %d cached (%.1fs)", made, len(unique) - made, time.perf_counter() - start)

    def setup(self, stage: str | None = None):
        """Read the pairs and give every unique clip its log-mel, computed once, cached on disk
        (`wpatch.stimuli.melcache`)."""
        if self.items is not None:
            return
        dims = model_dims(self.hparams.model)
        ctc = isinstance(dims, CTCDims)  # the wav2vec2 family reads waveforms (`wpatch.stimuli.waveforms`)
        path = pairs_path(self.hparams.pairs_file)
        pairs = self.read_pairs()
        if not ctc:
            check_languages(self.hparams.model, multilingual(dims), pairs=pairs, path=path)
        items = self._read_items()
        source_keys, target_keys = self._clip_keys(items)
        resolved = self._resolve_voices(source_keys + target_keys)
        source_keys, target_keys = resolved[: len(source_keys)], resolved[len(source_keys) :]
        unique = list(dict.fromkeys(source_keys + target_keys))
        index = {key: i for i, key in enumerate(unique)}
        self.clip_keys = unique  # the `ClipKey` of each row of self.mels
        self.clip_paths = [self._clip(key) for key in unique]  # the audio behind each row of self.mels
        if ctc:
            audio = waveforms(self.clip_paths, dims)
            self.mels, self.samples, self.spans, without_speech = (
                audio.values,
                audio.samples,
                audio.spans,
                audio.no_speech,
            )
        else:
            self.mel_store = MelStore(cache_root() / "mels")
            self.mels, self.spans = self.mel_store.table(
                self.clip_paths, dims.n_mels, dims.n_audio_ctx, pin=torch.cuda.is_available()
            )
            without_speech = self.mel_store.no_speech
        self._align_carriers(dims)
        clips = [(*key[:6], clip) for key, clip in zip(unique, self.clip_paths)]
        tell = self.trainer is None or self.trainer.is_global_zero
        self.silent_clips = silent_clips(pairs, path, clips, without_speech, tell)
        items["source_clip"] = [index[k] for k in source_keys]
        items["target_clip"] = [index[k] for k in target_keys]
        if self.hparams.require_heard != "none":
            items = self._keep_heard(items)
        items["control_clip"], items["control"] = control_clips(items)
        self.items_total = len(items)
        if self.shard is not None:  # after the control donors: they are drawn from every item of the whole run
            mine = shard_of(items, *self.shard)
            if not mine.any():
                raise WpatchError(
                    f"shard {self.hparams.shard} has no items: the run's {self.items_total} items have only "
                    f"{items['source_clip'].nunique()} source clips to share out; use at most that many shards"
                )
            items = items[mine].reset_index(drop=True)
        # items whose control donor is their own source clip; the module says so when it patches from controls
        self.control_fallbacks = int((items["control_clip"] == items["source_clip"]).sum())
        languages = {s.lang for role in ROLES for s in items[role]}
        tokenizers = {} if ctc else {lang: tokenizer_for(dims, lang) for lang in languages}
        groups = (
            items.groupby("source_clip", sort=False).indices
            if self.hparams.group_by_source
            else {i: [i] for i in range(len(items))}
        )
        self.groups = [[int(i) for i in group] for group in groups.values()]
        # each side's word as token ids of each written form (a control side: another item's source, same language);
        # none for a CTC model: its module spells the words
        self.tokens = {
            role: [{} if ctc else written_tokens(tokenizers[side.lang], side.word, side.lang) for side in items[role]]
            for role in (*ROLES, "control")
        }
        self.items = items

    def _resolve_voices(self, keys: list["ClipKey"]) -> list["ClipKey"]:
        """`keys` with each `best` clip's voice replaced by the one chosen for it (`choose_voices`): the candidates'
        clips are synthesised and screened with the run's model as needed, both cached, so a second call (setup after
        prepare_data) only reads the caches."""
        asked = sorted({key for key in keys if key.voice == BEST})
        if not asked:
            return keys
        dims, spec = model_dims(self.hparams.model), self.hparams.model
        if isinstance(dims, CTCDims):
            raise WpatchError(
                f"model {spec}: --data.tts best chooses voices by Whisper's screening, which a CTC model lacks; "
                "give a voice (--data.tts hibari)"
            )
        models = {}

        def heard_with(voice: str, texts: list[Text]) -> list[bool]:
            clips = [
                self._clip(ClipKey(t.word, t.lang, "", voice, "", "", t.carrier, "", ""))
                for t in each_clip(texts, f"--data.tts best: {voice}'s clips", self.stop_check)
            ]
            mels, _ = MelStore(cache_root() / "mels").table(clips, dims.n_mels, dims.n_audio_ctx)
            words, langs, carriers = ([getattr(t, f) for t in texts] for f in ("word", "lang", "carrier"))
            load = lambda: models.setdefault(spec, load_model(spec))  # noqa: E731 (loaded once, only if screening)
            return cached_screen(load, spec, mels, words, langs, self.screening_cache, carriers)["heard"].tolist()

        told = self.voice_choice  # prepare_data's choice: setup's is the same, and is not told twice
        self.voice_choice = choose_voices([Text(k.word, k.lang, k.carrier) for k in asked], heard_with, CANDIDATES)
        if self.voice_choice.unheard and self.voice_choice != told:
            unheard = self.voice_choice.unheard
            log.warning(
                "--data.tts best: no voice makes the model (%s) hear %d of %d clips (%s); they are spoken by the "
                "first voice and listed in summary.json (voice_choice.unheard)",
                spec,
                len(unheard),
                len(asked),
                ", ".join(text.word for text in unheard[:10]) + (", ..." if len(unheard) > 10 else ""),
            )
        chosen = {key: key._replace(voice=voice) for key, voice in zip(asked, self.voice_choice.voices)}
        return [chosen.get(key, key) for key in keys]

    def recorded(self) -> Recorded:
        """What the data records of the run for summary.json: clips synthesised (and damaged ones made again),
        the screening, clips without speech, how the frames of words heard in context were found, and a shard's
        place in the whole run (what `wpatch merge` checks the shards by)."""
        clips = self.clips.values()
        shard = None
        if self.shard is not None:
            shard = {"index": self.shard[0], "count": self.shard[1], "items_total": self.items_total}
        return Recorded(
            clip_cache={
                "synthesised": sum(c.synthesized for c in clips),
                "resynthesised_damaged": sum(c.repaired for c in clips),
            },
            screening=self.screening or None,
            voice_choice=self.voice_choice.record() if self.voice_choice else None,
            silent_clips=self.silent_clips,
            word_frames=self.word_frames or None,
            shard_items=shard,
        )

    def _align_carriers(self, dims) -> None:
        """The word frames of clips heard in context: a recorded word's from its aligned span
        (`wpatch.stimuli.contexts.recorded_frames`), a word spoken in a carrier sentence's from Whisper's alignment
        with the run's model (`wpatch.stimuli.carriers`); how they were found goes to `self.word_frames` (and
        summary.json)."""
        recorded = [i for i, key in enumerate(self.clip_keys) if key.context_start]
        for i in recorded:
            key = self.clip_keys[i]
            frames = recorded_frames(float(key.start), float(key.end), float(key.context_start), dims.n_audio_ctx)
            self.spans[i] = torch.tensor(frames)
        if recorded:
            self.word_frames["recorded"] = {"method": RECORDED, "clips": len(recorded)}
            log.info("word frames of %d recorded words in context: %s", len(recorded), RECORDED)
        carried = [i for i, key in enumerate(self.clip_keys) if key.carrier and not key.audio]
        if not carried:
            return
        if isinstance(dims, CTCDims):
            raise WpatchError(
                f"model {self.hparams.model}: the word frames of a carrier sentence come from Whisper's alignment, "
                "which a CTC model lacks; give words alone or recordings with their contexts"
            )
        model = load_model(self.hparams.model)
        tokenizers = {}
        for i in carried:
            word, lang, carrier = self.clip_keys[i].word, self.clip_keys[i].lang, self.clip_keys[i].carrier
            tokenizer = tokenizers.setdefault(lang, tokenizer_for(dims, lang))
            samples = len(load_audio(self.clip_paths[i]))
            self.spans[i] = torch.tensor(word_frames(model, tokenizer, self.mels[i], samples, carrier, word))
        self.word_frames |= {"method": ALIGNMENT, "model": self.hparams.model, "clips": len(carried)}
        log.info("word frames of %d clips in carrier sentences: %s", len(carried), ALIGNMENT)

    def screen(self) -> pd.DataFrame:
        """Every clean clip screened with the run's model (see `wpatch.stimuli.screening`): one row per clip, in clip
        order."""
        spec = self.hparams.model
        words, langs = [k.word for k in self.clip_keys], [k.lang for k in self.clip_keys]
        carriers = [k.carrier for k in self.clip_keys]
        screen = cached_screen(lambda: load_model(spec), spec, self.mels, words, langs, self.screening_cache, carriers)
        screen.insert(2, "voice", [k.voice or "recording" for k in self.clip_keys])
        screen.insert(3, "clip", [str(path) for path in self.clip_paths])
        return screen[SCREEN_COLUMNS]

    def _keep_heard(self, items: pd.DataFrame) -> pd.DataFrame:
        """The items whose clean clips the model hears (source, or source and target), counted in `self.screening`."""
        if self.samples is not None:
            raise WpatchError(
                "require_heard screens with Whisper's decoder; use --data.require_heard none with a CTC model"
            )
        heard = self.screen()["heard"].to_numpy()
        keep = heard[items["source_clip"].to_numpy()]
        if self.hparams.require_heard == "both":
            keep &= heard[items["target_clip"].to_numpy()]
        self.screening = {
            "require_heard": self.hparams.require_heard,
            "clips": len(heard),
            "clips_heard": int(heard.sum()),
            "items": len(items),
            "items_kept": int(keep.sum()),
            "items_dropped": int((~keep).sum()),
        }
        log.info(
            "require_heard=%s: %d of %d clips heard; %d of %d items kept",
            self.hparams.require_heard,
            heard.sum(),
            len(heard),
            keep.sum(),
            len(items),
        )
        if not keep.any():
            raise WpatchError(
                f"require_heard={self.hparams.require_heard}: the model hears none of the items' clips; "
                "use --data.require_heard none, another voice (--data.tts) or another model"
            )
        return items[keep].reset_index(drop=True)

    def collate(self, groups: list[int]) -> PairBatch:
        """A batch of the items in these groups (`wpatch.rows.PairBatch`): per side log-mels, clip indices and word
        frames; token ids; metadata. `PADDING` adds no item (a batch of only padding is empty)."""
        indices = [i for g in groups if g != PADDING for i in self.pending(g)]
        rows = self.items.iloc[indices]
        sides = {}
        for role in (*ROLES, "control"):
            clip = torch.tensor(rows[f"{role}_clip"].to_numpy())
            sides[role] = BatchSide(
                mel=self.mels[clip],
                clip=clip,
                span=self.spans[clip],
                tokens=[self.tokens[role][i] for i in indices],
                word=[side.word for side in rows[role]],
                lang=[side.lang for side in rows[role]],
                carrier=[self.clip_keys[i].carrier for i in clip.tolist()],
                samples=self.samples[clip] if self.samples is not None else None,
            )
        return PairBatch(item_id=torch.tensor(rows["item_id"].to_numpy()), **sides)

    def skip(self, item_ids: set[int]) -> None:
        """Leave these items out of the dataloader (already done, e.g. when resuming a run)."""
        self.skipped = set(item_ids)

    def pending(self, group: int) -> list[int]:
        """The items of source-clip group `group` still to compute (not skipped)."""
        return [i for i in self.groups[group] if i not in self.skipped]

    def pending_items(self) -> int:
        """How many items the dataloader serves."""
        return sum(len(self.pending(g)) for g in range(len(self.groups)))

    def predict_dataloader(self) -> DataLoader:
        if self.items is None:
            raise WpatchError("PairDataModule.predict_dataloader() called before setup(); call setup('predict') first")
        self.resolved_batch_size = self.hparams.batch_size
        if self.resolved_batch_size == "auto":
            trainer = self.trainer
            self.resolved_batch_size = (
                auto_batch(trainer.lightning_module, self, trainer.precision)[0] if trainer else DEFAULT_BATCH
            )
        pending = [g for g in range(len(self.groups)) if self.pending(g)]
        processes = self.trainer.world_size if self.trainer else 1
        if pending:  # every process needs a batch (one without skips the run's end, where the others wait for it)
            pending += [PADDING] * (processes - len(pending))
        return DataLoader(
            pending,
            batch_size=self.resolved_batch_size,
            collate_fn=self.collate,
            num_workers=self.hparams.num_workers,
            pin_memory=torch.cuda.is_available(),
        )


def control_clips(items: pd.DataFrame) -> tuple[list[int], list[Side]]:
    """For each item, a control donor: the source clip of another item, in the same language and voice, whose
    word is neither the item's source nor its target word (drawn with a fixed seed per item), and that item's
    source side.

    Where there is no such item (e.g. a one-pair run), the control is the item's own source clip and side: its
    rows then read donor_word = source_word, and `setup` logs how many items this happened to."""
    words = items["source"].map(attrgetter("word"))
    langs = items["source"].map(attrgetter("lang"))
    clips, sides = [], []
    for item in items.itertuples():
        pool = items[
            (langs == item.source.lang)
            & (items.voice == item.voice)
            & ~words.isin([item.source.word, item.target.word])
        ]
        if pool.empty:
            clips.append(item.source_clip)  # nothing unrelated to draw from: the control is the source itself
            sides.append(item.source)
            continue
        pick = pool.iloc[random.Random(item.item_id).randrange(len(pool))]
        clips.append(int(pick.source_clip))
        sides.append(pick.source)
    return clips, sides
