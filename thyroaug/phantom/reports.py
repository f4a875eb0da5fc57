"""Free-text thyroid scan reports, written the way nuclear medicine physicians write them.

``write_report(findings, center, rng)`` writes a report in one of the center's styles; what styles
vary, what they leave unsaid and which history / uptake lines appear: ``docs/phantom.md``,
"Findings and reports". The styles are in ``phantom.styles``, the words in ``phantom.phrases``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

import thyroaug.phantom.phrases as ph
from thyroaug.errors import ConfigError
from thyroaug.phantom.styles import CENTER_STYLES, ReportStyle
from thyroaug.reports.findings import Findings
from thyroaug.reports.rules import UPTAKE_PERCENT_BINS


@dataclass(frozen=True)
class Report:
    """A written report: the text, the findings it states, and the style that wrote it."""

    text: str
    stated: Findings
    style: str


def write_report(
    findings: Findings, center: str, rng: np.random.Generator, style: str | None = None
) -> str:
    """Write a free-text scan report for ``findings`` in one of ``center``'s styles.

    Args:
        findings: What the physician saw (None fields are not mentioned).
        center: Center letter, a key of ``CENTER_STYLES``.
        rng: Source of all choices (same state, same report).
        style: Force one of the center's styles by name (default: drawn from ``rng``).

    Returns:
        The report text.

    Raises:
        ConfigError: Unknown center or style.
    """
    return draft_report(findings, center, rng, style=style).text


def draft_report(
    findings: Findings, center: str, rng: np.random.Generator, style: str | None = None
) -> Report:
    """Like ``write_report`` but also return the ``Findings`` the text states and the style."""
    if center not in CENTER_STYLES:
        raise ConfigError(
            f"no report styles for center {center!r}; known centers: {', '.join(CENTER_STYLES)}"
        )
    styles = CENTER_STYLES[center]
    pick = int(rng.integers(len(styles)))
    if style is not None:
        names = [s.name for s in styles]
        if style not in names:
            raise ConfigError(f"center {center} has no style {style!r}; choose from {names}")
        pick = names.index(style)
    writer = _Writer(findings, styles[pick], rng)
    return Report(writer.write(), writer.stated, styles[pick].name)


# -------------------------------------------------------------------------------- the writer
class _Writer:
    """Writes one report; ``stated`` is updated to what the text actually says."""

    def __init__(self, findings: Findings, style: ReportStyle, rng: np.random.Generator):
        self.f = findings
        self.s = style
        self.rng = rng
        self.stated = self._decide_stated(findings)

    # ---- choices
    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def number(self, n: int) -> str:
        if self.s.number_words or self.chance(0.3):
            return ph.NUMBER_WORDS.get(n, str(n))
        return str(n)

    def _decide_stated(self, f: Findings) -> Findings:
        """Which fields this report mentions (physicians leave unremarkable things unsaid)."""
        s = f
        if f.nodules is not None and f.nodules > 3:  # written as "multiple": 3 = three or more
            s = replace(s, nodules=3)
        if f.uptake == "absent":  # an invisible gland has no size, texture or nodules to report
            s = replace(s, gland_size=None, distribution=None, nodules=None)
        if s.nodules is None or s.nodules == 0:
            s = replace(s, nodule_kind=None, nodule_side=None)
        elif s.nodules == 1 and s.nodule_side == "bilateral":
            s = replace(s, nodule_side=None)
        omit = self.s.omit_rate
        if s.background == "normal" and self.chance(omit):
            s = replace(s, background=None)
        if s.salivary == "normal" and self.chance(omit):
            s = replace(s, salivary=None)
        if s.pyramidal_lobe is False and self.chance(min(1.0, 2 * omit)):
            s = replace(s, pyramidal_lobe=None)
        if s.distribution == "homogeneous" and s.uptake is not None and self.chance(omit / 3):
            s = replace(s, distribution=None)
        return s

    # ---- sentences (prose register)
    def size_uptake_prose(self) -> list[str]:
        """Size, uptake and distribution: separate sentences or one merged sentence."""
        f = self.stated
        mergeable = f.uptake not in (None, "absent") and (f.gland_size or f.distribution)
        if mergeable and self.chance(0.45):
            size = self.pick(ph.SIZE_ADJ[f.gland_size]) if f.gland_size else None
            upt = self.pick(ph.UPTAKE_ADJ[f.uptake])
            dist = self.pick(ph.DIST_ADJ[f.distribution]) if f.distribution else None
            form = int(self.rng.integers(3))
            if form == 0:
                gland = f"The {size} thyroid gland" if size else "The thyroid gland"
                adjs = f"{upt} {dist}" if dist else upt
                out = [f"{gland} shows {adjs} tracer uptake."]
            elif form == 1:
                gland = f"{ph.capital(size)} gland" if size else "Thyroid gland"
                adjs = f"{upt}, {dist}" if dist else upt
                out = [f"{gland} with {adjs} uptake."]
            else:
                adjs = f"{upt} and {dist}" if dist else upt
                where = f" in {ph.article(size)} {size} gland" if size else " in the gland"
                out = [f"There is {adjs} tracer uptake{where}."]
            return out
        out = []
        if f.gland_size:
            out.append(self.pick(ph.SIZE_PROSE[f.gland_size]))
        if f.uptake:
            out.append(self.pick(ph.UPTAKE_PROSE[f.uptake]))
        if f.distribution:
            out.append(self.pick(ph.DIST_PROSE[f.distribution]))
        if len(out) > 1 and self.chance(0.3):
            out[0], out[1] = out[1], out[0]
        return out

    def percent_sentence(self, words_given: bool) -> str | None:
        f = self.stated
        if f.uptake not in UPTAKE_PERCENT_BINS or not self.chance(self.s.percent_rate):
            return None
        low, high = UPTAKE_PERCENT_BINS[f.uptake]
        margin = 0.05 * (high - low)  # keep the rounded value inside the bin
        value = float(self.rng.uniform(low + margin, high - margin))
        text = f"{value:.2f}" if value < 1 else f"{value:.1f}"
        ref = self.pick(("", " (normal 0.5-2.5%)", " (ref. 0.5-2.5%)"))
        if words_given:
            return f"Thyroid uptake at 20 minutes: {text}%{ref}."
        return self.pick(
            (
                f"Pertechnetate uptake {text}%{ref}.",
                f"Thyroid uptake at 20 minutes was {text}%{ref}.",
            )
        )

    def nodule_sentences(self, terse: bool = False) -> list[str]:
        f = self.stated
        if f.nodules is None:
            return []
        if f.nodules == 0:
            return [self.pick(ph.NO_NODULES_TERSE if terse else ph.NO_NODULES_PROSE)]
        n, kind, side = f.nodules, f.nodule_kind, f.nodule_side
        if terse:
            return [self._nodule_terse(n, kind, side)]
        if n == 2 and kind == "mixed" and side == "bilateral" and self.chance(0.5):
            hot_side, cold_side = ("right", "left") if self.chance(0.5) else ("left", "right")
            return [
                f"There is a hot nodule in the {hot_side} lobe and a cold nodule in the "
                f"{cold_side} lobe."
            ]
        if n == 1:
            quant = self.pick(("a", "a single", "a solitary", "one"))
        elif n == 2:
            quant = self.number(2)
        else:
            quant = self.pick(("multiple", "several", "numerous", self.number(3), self.number(4)))
        noun = "nodule" if n == 1 else "nodules"
        verb = "is" if n == 1 else "are"
        place = self.pick(ph.SIDE_PLACE[side]) if side else ""
        if side == "bilateral" and n == 2 and self.chance(0.4):
            place = ", one in each lobe"
        if kind and self.chance(0.25) and place:  # kind said in a follow-up sentence
            first = f"There {verb} {quant} {noun} {place}.".replace(" , ", ", ")
            if kind == "mixed":
                return [first, "They include both hot and cold nodules."]
            pron = (
                "It is" if n == 1 else self.pick(("They are", "Both are" if n == 2 else "All are"))
            )
            return [first, f"{pron} {self.pick(ph.KIND_ADJ[kind])}."]
        adj = self.pick(ph.KIND_ADJ[kind]) if kind else ""
        if kind == "mixed" and n > 1 and self.chance(0.5):
            tail = f", {self.pick(('both hot and cold', 'of mixed function (hot and cold)'))}"
            phrase = f"{quant} {noun}{' ' + place if place else ''}{tail}".replace(" , ", ", ")
        else:
            if quant in ("a", "a single", "a solitary") and adj:
                quant = quant if quant != "a" else ph.article(adj)
            phrase = " ".join(x for x in (quant, adj, noun, place) if x).replace(" , ", ", ")
        form = int(self.rng.integers(4))
        if form == 0:
            return [f"There {verb} {phrase}."]
        if form == 1:
            return [f"{ph.capital(phrase)} {verb} noted."]
        if form == 2:
            return [f"The scan demonstrates {phrase}."]
        return [f"{ph.capital(phrase)} {verb} seen."]

    def _nodule_terse(self, n: int, kind: str | None, side: str | None) -> str:
        count = {1: self.pick(("1", "single", "solitary")), 2: self.number(2)}.get(
            n, self.pick(("multiple", "several", "3", "4"))
        )
        adj = {"mixed": "hot and cold"}.get(kind, kind) if kind else ""
        place = self.pick(ph.SIDE_TERSE[side]) if side else ""
        if self.chance(0.5):
            parts = ", ".join(x for x in (f"{count} {adj}".strip(), place) if x)
            return f"Nodules: {parts}."
        noun = "nodule" if n == 1 else "nodules"
        text = " ".join(x for x in (ph.capital(count), adj, noun) if x)
        return f"{text}, {place}." if place else f"{text}."

    def background_sentence(self, terse: bool = False) -> str | None:
        v = self.stated.background
        if v is None:
            return None
        if terse:
            return self.pick((f"Background {v}.", f"{ph.capital(v)} background."))
        return self.pick(ph.BACKGROUND_PROSE[v])

    def salivary_sentence(self, terse: bool = False) -> str | None:
        v = self.stated.salivary
        if v is None:
            return None
        if terse:
            return f"Salivary glands {self.pick(ph.SALIVARY_VALUE[v])}."
        return self.pick(ph.SALIVARY_PROSE[v])

    def pyramidal_sentence(self, terse: bool = False) -> str | None:
        v = self.stated.pyramidal_lobe
        if v is None:
            return None
        return self.pick((ph.PYRAMIDAL_TERSE if terse else ph.PYRAMIDAL_PROSE)[v])

    def impression(self) -> list[str]:
        """The conclusion, in varied clinical words, consistent with the stated nodules."""
        label = self.stated.impression
        if label is None:
            return []
        f = self.stated
        plain = list(ph.DX_PLAIN[label])
        nouns = list(ph.DX_NOUNS[label])
        if label == "NG" and f.nodules == 3:
            plain += ["Multinodular goiter.", "Multinodular goiter (MNG)."]
            nouns += ["a multinodular goiter"]
            if f.nodule_kind in ("hot", "mixed"):
                plain += ["Toxic multinodular goiter."]
                nouns += ["a toxic multinodular goiter"]
        if label == "NG" and f.nodules == 1 and f.nodule_kind == "hot":
            plain += ["Toxic adenoma.", "Autonomous nodule, in keeping with a toxic adenoma."]
            nouns += ["a toxic adenoma", "a toxic adenoma (Plummer's disease)"]
        if label == "NG" and f.nodules == 1 and f.nodule_kind == "cold":
            plain += ["Solitary cold nodule in a nodular goiter."]
        if self.chance(self.s.hedge_rate):
            out = [self.pick(ph.HEDGES).format(dx=self.pick(nouns))]
        else:
            out = [self.pick(plain)]
        out[0] = ph.capital(out[0])
        if self.chance(0.2):
            out.append(self.pick(ph.NEGATED_OTHERS[label]))
        return out

    def history(self) -> str | None:
        if not self.chance(self.s.history_rate):
            return None
        return self.pick(ph.HISTORY).format(
            age=int(self.rng.integers(18, 80)), sex=self.pick(("woman", "man", "female", "male"))
        )

    def technique(self) -> str:
        t = self.pick((20, 15, 20))
        t_text = f"{self.number(t) if self.s.number_words else t} minutes"
        dose = self.pick(("74", "111", "148", "185"))
        return self.pick(ph.TECHNIQUE).format(t=t_text, dose=dose)

    def findings_prose(self) -> list[str]:
        out = self.size_uptake_prose()
        words_given = self.stated.uptake is not None
        pct = self.percent_sentence(words_given)
        if pct:
            out.append(pct)
        out += self.nodule_sentences()
        extras = [
            x
            for x in (
                self.background_sentence(),
                self.salivary_sentence(),
                self.pyramidal_sentence(),
            )
            if x
        ]
        order = self.rng.permutation(len(extras))
        return out + [extras[i] for i in order]

    # ---- layouts
    def write(self) -> str:
        text = getattr(self, f"_layout_{self.s.layout}")()
        text = self._spell(text)
        if self.s.abbreviations:
            text = self._abbreviate(text)
        return text.strip() + "\n"

    def _layout_headed(self) -> str:
        heads = (
            ("CLINICAL HISTORY", "TECHNIQUE", "FINDINGS", "IMPRESSION")
            if not self.s.british
            else ("Clinical details", "Procedure", "Report", "Conclusion")
        )
        lines = []
        hist = self.history()
        if hist:
            lines.append(f"{heads[0]}: {hist}")
        lines.append(f"{heads[1]}: {self.technique()}")
        lines.append(f"{heads[2]}: {' '.join(self.findings_prose())}")
        imp = self.impression()
        if imp:
            lines.append(f"{heads[3]}: {' '.join(imp)}")
        if self.chance(0.2):
            lines.append(self.pick(ph.RECOMMEND))
        return "\n".join(lines)

    def _layout_narrative(self) -> str:
        sents = []
        hist = self.history()
        head = f"{self.pick(ph.HISTORY_HEADS)}: {hist}\n" if hist else ""
        if self.chance(0.6):
            sents.append(self.technique())
        sents += self.findings_prose()
        imp = self.impression()
        if imp:
            lead = self.pick(("", "Overall, ", "In summary: ", "Conclusion: "))
            first = imp[0]
            if lead and first[0].isupper() and not first.startswith(("Graves", "Basedow", "De ")):
                first = first[0].lower() + first[1:]
            sents.append(lead + first if lead else first)
            sents += imp[1:]
        if self.chance(0.15):
            sents.append(self.pick(ph.RECOMMEND))
        return head + " ".join(sents)

    def _layout_letter(self) -> str:
        hist = self.history() or "thyroid dysfunction"
        hist = hist.rstrip(".")
        body = " ".join(self.findings_prose())
        imp = self.impression()
        parts = [
            f"Dear Dr {self.pick(ph.DOCTORS)},",
            "",
            f"Thank you for referring this patient ({hist[0].lower() + hist[1:]}). The thyroid "
            "scan was performed with technetium-99m pertechnetate. " + body,
        ]
        if imp:
            first = imp[0]
            if not first.startswith(("Graves", "Basedow", "De ")):
                first = first[0].lower() + first[1:]
            parts.append(" ".join([f"In summary, {first}", *imp[1:]]))
        parts += ["", "Yours sincerely,", f"Dr {self.pick(ph.DOCTORS)}", "Nuclear Medicine"]
        return "\n".join(parts)

    def _layout_telegraphic(self) -> str:
        f = self.stated
        lines = [self.pick(("Tc-99m pertechnetate scan, ant. pinhole.", "Thyroid scan (Tc-99m)."))]
        hist = self.history()
        if hist:
            lines.append(f"Hx: {hist}")
        if f.gland_size:
            lines.append(self.pick(ph.SIZE_TERSE[f.gland_size]))
        if f.uptake == "absent":
            lines.append(self.pick(("Thyroid not visualized.", "No thyroid uptake.")))
        elif f.uptake:
            adj = self.pick(ph.UPTAKE_ADJ[f.uptake])
            if f.uptake in ph.UPTAKE_ARROWS and self.s.abbreviations and self.chance(0.3):
                adj = ph.UPTAKE_ARROWS[f.uptake]
            dist = f", {self.pick(ph.DIST_ADJ[f.distribution])}" if f.distribution else ""
            lines.append(f"Uptake {adj}{dist}.")
        elif f.distribution:
            lines.append(f"Distribution {self.pick(ph.DIST_ADJ[f.distribution])}.")
        pct = self.percent_sentence(f.uptake is not None)
        if pct:
            lines.append(pct)
        lines += self.nodule_sentences(terse=True)
        extras = [
            x
            for x in (
                self.background_sentence(terse=True),
                self.salivary_sentence(terse=True),
                self.pyramidal_sentence(terse=True),
            )
            if x
        ]
        if extras:
            lines.append(" ".join(extras))
        imp = self.impression()
        if imp:
            lines.append(f"{self.pick(('Imp:', 'Impression:', '=>'))} {' '.join(imp)}")
        return "\n".join(lines)

    def _layout_bullets(self) -> str:
        f = self.stated
        lines = ["Examination: Thyroid scintigraphy (technetium-99m pertechnetate), anterior view"]
        hist = self.history()
        if hist:
            lines.append(f"Indication: {hist}")
        lines.append("Findings:")
        if f.gland_size:
            lines.append(f"- Gland size: {self.pick(ph.SIZE_VALUE[f.gland_size])}")
        if f.uptake:
            lines.append(f"- Uptake: {self.pick(ph.UPTAKE_VALUE[f.uptake])}")
        pct = self.percent_sentence(True)
        if pct:
            lines.append(f"- {pct.rstrip('.')}")
        if f.distribution:
            lines.append(f"- Distribution: {self.pick(ph.DIST_ADJ[f.distribution])}")
        if f.nodules is not None:
            if f.nodules == 0:
                lines.append(f"- Nodules: {self.pick(('none', 'nil', 'not seen'))}")
            else:
                count = {1: self.number(1), 2: self.number(2)}.get(
                    f.nodules, self.pick(("multiple", self.number(3), "several"))
                )
                kind = {"mixed": "hot and cold"}.get(f.nodule_kind, f.nodule_kind or "")
                side = self.pick(ph.SIDE_TERSE[f.nodule_side]) if f.nodule_side else ""
                lines.append("- Nodules: " + ", ".join(x for x in (count, kind, side) if x))
        if f.background:
            lines.append(f"- Background: {f.background}")
        if f.salivary:
            lines.append(f"- Salivary glands: {self.pick(ph.SALIVARY_VALUE[f.salivary])}")
        if f.pyramidal_lobe is not None:
            value = self.pick(
                ("present", "seen", "yes") if f.pyramidal_lobe else ("not seen", "no")
            )
            lines.append(f"- Pyramidal lobe: {value}")
        imp = self.impression()
        if imp:
            lines.append(f"{self.pick(('Conclusion', 'Impression', 'Diagnosis'))}: {' '.join(imp)}")
        return "\n".join(lines)

    # ---- surface forms
    def _spell(self, text: str) -> str:
        if not self.s.british:
            return text
        for pattern, repl in ph.BRITISH:
            text = re.sub(pattern, repl, text)
        return text

    def _abbreviate(self, text: str) -> str:
        subs = (
            (r"technetium-99m pertechnetate", ("Tc-99m pertechnetate", "99mTc-pertechnetate")),
            (r"Technetium-99m pertechnetate", ("Tc-99m pertechnetate", "99mTc-pertechnetate")),
            (r"\bright lobe\b", ("rt lobe", "rt. lobe", "R lobe")),
            (r"\bleft lobe\b", ("lt lobe", "lt. lobe", "L lobe")),
            (r"\bbackground\b", ("bkg", "b/g", "background")),
            (r"\bBackground\b", ("Bkg", "BG")),
            (r"\b[Ss]alivary glands\b", ("SGs", "SG")),
            (r"\bpyramidal lobe\b", ("pyr. lobe", "pyramidal lobe")),
            (r"\bPyramidal lobe\b", ("Pyr. lobe", "Pyr lobe")),
            (r"\b[Mm]ultinodular (goiter|goitre)\b(?! \(MNG\))", ("MNG",)),
            (r"\bintravenous(ly)?\b", ("IV",)),
            (r"\bminutes\b", ("min",)),
            (r" with ", (" w/ ", " with ")),
        )
        for pattern, options in subs:
            text = re.sub(pattern, lambda _m, o=options: self.pick(o), text)
        return text
