"""Known English and French pages for the OCR quality checks (test and bench), and the character error rate.

The texts were written for this check and are not used to tune anything: they are typeset
as a PDF text layer, rendered to pictures and saved as an image-only PDF (tests.documents),
then read back through the ingestion's OCR.
"""

from __future__ import annotations

import textwrap

ENGLISH = [
    "The harbour master keeps a ledger of every ship that enters the port. Each entry records the name of the "
    "vessel, its flag, the cargo it carries and the hour it was moored. On stormy nights the ledger fills slowly, "
    "because the pilots refuse to guide large ships through the narrow channel.",
    "Our quarterly survey asked 1,240 customers how they travel to work. Forty-two percent cycle, thirty-one "
    "percent take the train and the rest drive or walk. Most cyclists said that a covered bicycle shelter near "
    "the station would make them ride in winter as well.",
]
FRENCH = [
    "Le conseil municipal s'est réuni jeudi soir à la mairie pour examiner le budget de l'année prochaine. Les "
    "élus ont approuvé la rénovation de la bibliothèque et la création d'une piste cyclable le long du canal. "
    "Le maire a précisé que les travaux débuteraient dès la fin de l'été.",
    "Au marché du samedi, les producteurs vendent des fromages affinés, du pain de seigle et des légumes cueillis "
    "la veille. Les habitués arrivent tôt, car les cerises et les fraises disparaissent avant neuf heures. Le "
    "boulanger ferme son étal à midi précis.",
]


def page_lines(paragraph: str, width: int = 80) -> list[str]:
    return textwrap.wrap(paragraph, width)


def normalise(text: str) -> str:
    """Whitespace collapsed: OCR line breaks and spacing are not character errors."""
    return " ".join(text.split())


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate: Levenshtein distance over the reference length (whitespace normalised)."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i]
        for j, h in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / max(1, len(ref))
