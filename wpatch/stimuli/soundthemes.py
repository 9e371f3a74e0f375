"""Translation-aligned word lists: KDE's KTuberling sounds (Debian's `ktuberling-data`, under
/usr/share/ktuberling/sounds), one speaker per language naming the same objects, and their pairs.

Each language has `LANG.soundtheme`, XML whose `<sound name="OBJECT" file="LANG/FILE"/>` entries map an object
(the concept, e.g. `eye`, `egypt_camel`) to its recording. The word is the file's name without its extension and
without a theme prefix up to the last `_` (`es/ojo.wav` -> `ojo`, `fr/patate_oeil.wav` -> `oeil`), `-` read as a
space; an English word is its object's name read the same way (`egypt_camel` -> `camel`). Many languages name
their files by the English object names, so their words' text is not in the data: a language whose files mostly
carry the object's name has no text and is refused; in the others, an object whose file carries its English name
is passed over with a note, and so is an entry whose file is missing. The speaker of a language is
`ktuberling-LANG` (the data does not name them).
"""

import io
import logging
import random
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pandas as pd

from wpatch.errors import WpatchError
from wpatch.stimuli.recordings import Recording, RecordingPair, decodable
from wpatch.stimuli.sets import CURATED

LICENCE = "GPL-2+"  # Debian's ktuberling-data copyright file: `Files: *`, License: GPL-2+
log = logging.getLogger(__name__)


def spoken_word(stem: str) -> str:
    """The word a file name or object name says: after its last `_` (a theme prefix), `-` as a space."""
    return stem.rsplit("_", 1)[-1].replace("-", " ").strip().lower()


def theme_entries(root: Path, lang: str) -> list[tuple[str, Path]]:
    """(object, recording) of each `<sound>` of `root/LANG.soundtheme`, in file order; refused in one line where
    the file is missing or is not such XML."""
    path = root / f"{lang}.soundtheme"
    if not path.is_file():
        known = sorted(p.stem for p in root.glob("*.soundtheme"))
        raise WpatchError(
            f"no {path.name} in {root}; its languages are {', '.join(known) or 'none (no *.soundtheme files)'}"
        )
    try:
        sounds = ElementTree.parse(path).getroot().iter("sound")
        entries = [(sound.attrib["name"], root / sound.attrib["file"]) for sound in sounds]
    except (ElementTree.ParseError, KeyError) as error:
        raise WpatchError(
            f"{path} is not a soundtheme ({error}); it needs <sound name=... file=.../> entries in XML"
        ) from None
    if not entries:
        raise WpatchError(f"{path} has no <sound name=... file=.../> entries; give a language that names objects")
    return entries


def read_soundthemes(root: str | Path, languages: list[str], corpus: str, licence: str | None) -> list[Recording]:
    """The recordings of these languages whose words' text the data holds (module docstring), language by language,
    in each soundtheme's order; `concept` is the object's name."""
    root = Path(root)
    if not root.is_dir():
        raise WpatchError(
            f"soundtheme folder {root} does not exist or is not a folder; give e.g. /usr/share/ktuberling/sounds"
        )
    recordings = []
    for lang in languages:
        entries = theme_entries(root, lang)
        present = [(name, path) for name, path in entries if path.is_file()]
        if len(present) < len(entries):
            missing = next(path for name, path in entries if not path.is_file())
            log.warning(
                f"wpatch: note: {len(entries) - len(present)} of {lang}.soundtheme's {len(entries)} entries name a "
                f"missing file (e.g. {missing}); passed over"
            )
        if not present:
            raise WpatchError(f"none of the files {lang}.soundtheme names is in {root}; reinstall the sounds")
        if lang == "en":
            words = {name: spoken_word(name) for name, _ in present}
        else:
            named_in_english = {name for name, path in present if spoken_word(path.stem) == spoken_word(name)}
            if 2 * len(named_in_english) > len(present):
                raise WpatchError(
                    f"{lang}.soundtheme names {len(named_in_english)} of its {len(present)} files by the objects' "
                    f"English names, so the {lang} words' text is not in the data; give languages whose files carry "
                    "their words (e.g. es, fr, it, nl)"
                )
            if named_in_english:
                log.warning(
                    f"wpatch: note: {len(named_in_english)} {lang} files carry their object's English name (e.g. "
                    f"{sorted(named_in_english)[0]}), so their {lang} text is unknown; passed over"
                )
            words = {name: spoken_word(path.stem) for name, path in present if name not in named_in_english}
        recordings += [
            decodable(
                Recording(
                    path=path,
                    word=words[name],
                    language=lang,
                    speaker=f"ktuberling-{lang}",
                    concept=name,
                    corpus=corpus,
                    licence=LICENCE if licence is None else licence,
                )
            )
            for name, path in present
            if name in words
        ]
    return recordings


def translation_category(a: Recording, b: Recording) -> str:
    """`cognate` or `non-cognate` where the packaged English-Spanish list has the two words, else `translation`."""
    if (a.language, b.language) == ("en", "es"):
        curated = pd.read_csv(io.StringIO((CURATED / "english_spanish_pairs.csv").read_text()), dtype=str)
        kinds = dict(zip(zip(curated.word_en, curated.word_es), curated.kind))
        return kinds.get((a.word, b.word), "translation")
    return "translation"


def language_list(text: str) -> list[str]:
    """The languages of `--languages` (comma-separated): one (pairs within it) or two different ones."""
    languages = [lang.strip() for lang in text.split(",") if lang.strip()]
    if len(languages) not in (1, 2) or len(set(languages)) != len(languages):
        raise WpatchError(
            f"--languages {text}: give one language (pairs within it) or two different ones (translations), e.g. en,es"
        )
    return languages


def translation_pairs(recordings: list[Recording], languages: list[str], seed: int = 0) -> list[RecordingPair]:
    """The pairs of one or two languages (`language_list`). Two: one pair per object both name (in the first's
    order), the first language's word as side a. One: each object's word with another object's, the partner
    drawn by a permutation seeded by `seed` (each word once as a and once as b; two objects of one recording,
    e.g. es `lazo` for bow and tie, make no pair)."""
    by_lang = {lang: [r for r in recordings if r.language == lang] for lang in languages}
    if len(languages) == 2:
        first, second = (by_lang[lang] for lang in languages)
        translated = {r.concept: r for r in second}
        pairs = [
            RecordingPair(a, translated[a.concept], translation_category(a, translated[a.concept]))
            for a in first
            if a.concept in translated
        ]
    else:
        words = list(by_lang[languages[0]])
        random.Random(seed).shuffle(words)
        pairs = [
            RecordingPair(a, b) for a, b in zip(words, words[1:] + words[:1]) if a.path != b.path and a.word != b.word
        ]
    if not pairs:
        raise WpatchError(
            f"{' and '.join(languages)} have no object in common with known text; give languages that name the "
            "same objects (e.g. en,es)"
            if len(languages) == 2
            else f"{languages[0]} has fewer than two recordings with known text; give a language with more"
        )
    return pairs
