"""A labelled folder of single-word recordings read by a file-name pattern (e.g. the Free Spoken Digit Dataset's
`{word}_{speaker}_{take}.wav`), and its pairs within and across speakers.

The pattern names fields in braces, `{word}`, `{speaker}`, `{language}`, `{take}` (`{word}` required; no speaker
field: every file is the folder's one speaker; no language field: the caller's), every other character literal. A
pattern without `/` is matched against each file's name, in the folder or any folder below it (so FSDD's folder and
its `recordings/` read the same); one with `/` against the file's path relative to the folder (so
`{speaker}/{word}_{take}.wav` reads a folder per speaker). An audio file that does not match is passed over, with a
note naming how many and one of them.

A `README.md` in the folder or the folder above may hold a Markdown table with `speaker` and `accent` columns
(FSDD's does): each speaker's accent then goes into the rows. Its line starting `Licence:` or `License:` names the
licence where it holds a short form in brackets, e.g. `(CC BY-SA 4.0)`.
"""

import logging
import random
import re
from pathlib import Path

from wpatch.errors import WpatchError
from wpatch.stimuli.corpora import AUDIO_SUFFIXES
from wpatch.stimuli.recordings import Recording, RecordingPair, decodable

FIELDS = ("word", "speaker", "language", "take")
log = logging.getLogger(__name__)


def pattern_regex(pattern: str) -> re.Pattern:
    """The regular expression of a file-name pattern: each `{field}` a group matching one or more characters other
    than `/` (the shortest that lets the rest match), everything else literal."""
    pieces = re.split(r"\{([^{}]*)\}", pattern)  # literal, field, literal, field, ..., literal
    literals, named = pieces[::2], pieces[1::2]
    if any("{" in literal or "}" in literal for literal in literals):
        raise WpatchError(f"pattern {pattern!r} has an unmatched brace; write fields as {{word}}, {{speaker}}, ...")
    for field in named:
        if field not in FIELDS:
            raise WpatchError(
                f"pattern {pattern!r} names field {{{field}}}; the fields are {', '.join(f'{{{f}}}' for f in FIELDS)}"
            )
        if named.count(field) > 1:
            raise WpatchError(f"pattern {pattern!r} names {{{field}}} twice; name each field once")
    if "word" not in named:
        raise WpatchError(f"pattern {pattern!r} has no {{word}}; e.g. '{{word}}_{{speaker}}_{{take}}.wav'")
    groups = [f"(?P<{field}>[^/]+?)" for field in named] + [""]
    return re.compile("".join(re.escape(literal) + group for literal, group in zip(literals, groups)))


def readme_notes(root: Path) -> tuple[dict[str, str], str]:
    """Speaker -> accent from a Markdown table with `speaker` and `accent` columns, and the licence's short form,
    from `README.md` in the folder or the folder above (empty where neither says)."""
    for readme in (root / "README.md", root.parent / "README.md"):
        if readme.is_file():
            lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
            accents, header = {}, None
            for line in lines:
                cells = [cell.strip().lower() for cell in line.strip().strip("|").split("|")] if "|" in line else None
                if cells is None:
                    header = None
                elif header is None:
                    header = cells if {"speaker", "accent"} <= set(cells) else None
                elif not set(line.strip()) <= set("|-: "):
                    row = [cell.strip() for cell in line.strip().strip("|").split("|")]
                    if len(row) == len(header):
                        accents[row[header.index("speaker")]] = row[header.index("accent")]
            licence = next(
                (m.group(1) for line in lines if (m := re.match(r"\s*Licen[cs]e:.*?\(([^()]{2,30})\)", line))), ""
            )
            return accents, licence
    return {}, ""


def read_pattern_folder(root: str | Path, pattern: str, lang: str, corpus: str, licence: str | None) -> list[Recording]:
    """Every recording of the folder whose relative path matches the pattern (in path order), with its speaker's
    accent and the licence from the folder's README (`licence` None) where it says."""
    root = Path(root)
    if not root.is_dir():
        raise WpatchError(f"corpus folder {root} does not exist or is not a folder; give the recordings' folder")
    regex = pattern_regex(pattern)
    accents, readme_licence = readme_notes(root)
    licence = licence if licence is not None else readme_licence
    found, passed_over = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        match = regex.fullmatch(path.relative_to(root).as_posix() if "/" in pattern else path.name)
        if match is None:
            if path.suffix.lower() in AUDIO_SUFFIXES:
                passed_over.append(path)
            continue
        fields = match.groupdict()
        speaker = fields.get("speaker") or root.resolve().name
        found.append(
            Recording(
                path=path,
                word=fields["word"],
                language=fields.get("language") or lang,
                speaker=speaker,
                take=fields.get("take") or "",
                accent=accents.get(speaker, ""),
                corpus=corpus,
                licence=licence,
            )
        )
    if not found:
        example = next((p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()), None)
        raise WpatchError(
            f"no file in {root} matches the pattern {pattern!r}"
            + (f" (e.g. {example!r} does not)" if example else " (the folder is empty)")
            + "; write the pattern after the files' names, e.g. '{word}_{speaker}_{take}.wav'"
        )
    if passed_over:
        log.warning(
            f"wpatch: note: {len(passed_over)} audio files in {root} do not match {pattern!r} and are passed over "
            f"(e.g. {passed_over[0].relative_to(root)})"
        )
    if not licence:
        log.warning(f"wpatch: note: no licence given and no README.md by {root} names one; pass --licence")
    return [decodable(recording) for recording in found]


def speaker_pairs(
    recordings: list[Recording], seed: int = 0, per_pair: int = 1, same_speaker: bool = False
) -> list[RecordingPair]:
    """Every two different words of one language, per speaker who says word A: `per_pair` rows with that speaker's
    takes of both words and, unless `same_speaker`, `per_pair` rows with their take of A and another speaker's
    take of B. Takes, and the other speaker, are drawn with a generator seeded by `seed` and the row's words and
    speaker, so a row does not change when other words or speakers are added; the speaker's own takes are drawn
    without repeats while they last."""
    if per_pair < 1:
        raise WpatchError(f"per_pair {per_pair} keeps no pairs; give 1 or more rows per word pair")
    takes: dict[tuple[str, str, str], list[Recording]] = {}
    for recording in recordings:
        takes.setdefault((recording.language, recording.word, recording.speaker), []).append(recording)
    words = sorted({(r.language, r.word) for r in recordings})
    pairs = []
    for i, (lang, word_a) in enumerate(words):
        for lang_b, word_b in words[i + 1 :]:
            if lang_b != lang:
                continue
            for speaker in sorted({s for (la, w, s) in takes if (la, w) == (lang, word_a)}):
                draw = random.Random(f"{seed}:{lang}:{word_a}:{word_b}:{speaker}")
                mine_a = draw.sample(takes[lang, word_a, speaker], len(takes[lang, word_a, speaker]))
                mine_b = takes.get((lang, word_b, speaker), [])
                mine_b = draw.sample(mine_b, len(mine_b))
                others = sorted(s for (la, w, s) in takes if (la, w) == (lang, word_b) and s != speaker)
                for n in range(per_pair):
                    take_a = mine_a[n % len(mine_a)]
                    if mine_b:
                        pairs.append(RecordingPair(take_a, mine_b[n % len(mine_b)]))
                    if others and not same_speaker:
                        pairs.append(RecordingPair(take_a, draw.choice(takes[lang, word_b, draw.choice(others)])))
    if not pairs:
        raise WpatchError(
            f"the {len(recordings)} recordings matched hold {len(words)} word(s)"
            + (" none of which one speaker says with another" if words[1:] else "")
            + "; a pair needs two different words of one language"
            + (" said by one speaker (drop --same-speaker)" if same_speaker else "")
        )
    return pairs
