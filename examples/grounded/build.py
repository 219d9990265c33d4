"""Build the grounded-answering training set for the default model's LoRA adapter (deterministic, seeded).

    .venv/bin/python examples/grounded/build.py --out data/grounded/train.jsonl            # the full set
    .venv/bin/python examples/grounded/build.py --out data/grounded/pilot.jsonl --answers 300 --agent 0

Every example is invented (`world.py`): documents about made-up products, people, organisations,
places, methods and events, in English and French; several numbered sources per question, with
distractors (the same attribute of another entity, a near-miss name, another document about the same
entity that lacks the asked fact, unrelated documents); questions of many shapes (what, when, how
many, who, where, what an acronym means, lists, "which X ...", yes/no, comparisons, follow-ups, and
questions the sources do not answer); answers that copy the supporting sentence and cite it as `[n]`,
or "I don't know". Agent traces follow the ReAct agent: the question, the agent's own first search
and its observation, a calculator call for arithmetic, and a `Final Answer` citing the sources.

Rendering goes through the service's own code, so the adapter sees exactly what the service sends:
documents are chunked by the RAG chunker (recursive, 200 tokens, overlap 30, the defaults), the
chunks become `Hit`s, `services.rag.context.select_context` picks what the prompt shows (with the
in-process MiniLM embedder and the chunker's token counter, like `/rag/query`), and
`services.rag.prompt.answer_messages` / `services.rag.agent.react` write the messages. The answer's
`[n]` is the number that source got in the rendered prompt; an example whose supporting sentence was
not selected is dropped (counted in the summary).

Nothing from `datasets/course/` (the evaluation set) is read or imitated here.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import world  # noqa: E402
from world import ATTRS, INTRO, NEW, Entity, Lang, fill, keys_of, near_miss  # noqa: E402

# ------------------------------------------------------------------------------------------ documents


@dataclass
class Doc:
    doc_id: str
    source: str | None  # what the prompt shows as "(source)"
    text: str
    lang: Lang
    entity: Entity
    facts: dict[str, tuple[int, int]] = field(default_factory=dict)  # attribute -> offsets of its sentence

    def sentence(self, key: str) -> str:
        a, b = self.facts[key]
        return self.text[a:b]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "doc"


def _title(rng: random.Random, e: Entity, lang: Lang) -> str:
    if e.kind == "product":
        options = {
            "en": [e.name, f"{e.name}: product sheet", f"{e.name} review"],
            "fr": [e.name, f"Fiche produit : {e.name}", f"Test du {e.name}"],
        }
    elif e.kind == "method":
        options = {
            "en": [e.name, f"{e.name} in short", f"Notes on {e.name}"],
            "fr": [e.name, f"{e.name} en bref", f"Présentation de {e.name}"],
        }
    else:
        options = {
            "en": [e.name, f"About {e.name}", f"{e.name}: a profile"],
            "fr": [e.name, f"À propos de {e.name}", f"Portrait : {e.name}"],
        }
    return rng.choice(options[lang])


def make_doc(rng: random.Random, e: Entity, lang: Lang, keys: list[str], counter: list[int]) -> Doc:
    """A document stating `keys` of `e` (one sentence each), with an intro, fillers and a layout."""
    year = rng.randint(2008, 2023)
    sentences: list[tuple[str | None, str]] = [(None, fill(rng.choice(INTRO[e.kind][lang]), e, lang, ""))]
    for key in keys:
        sentences.append((key, fill(rng.choice(ATTRS[key].say[lang]), e, lang, e.facts[key](lang), year)))
    for _ in range(rng.choice((0, 1, 1, 2))):
        sentences.insert(rng.randint(1, len(sentences)), (None, rng.choice(world.FILLER[lang])))
    title = _title(rng, e, lang)
    style = rng.choices(["prose", "paragraphs", "bullets"], weights=[5, 3, 2])[0]
    parts: list[tuple[str | None, str]] = []  # (key, text) pieces, joined with their separators
    if rng.random() < 0.5:  # what `inferag eval` and many uploads look like: the title on the first line
        parts.append((None, title + "\n\n"))
    if style == "bullets":
        parts.append((sentences[0][0], sentences[0][1]))
        parts.append((None, "\n\n"))
        for i, (key, s) in enumerate(sentences[1:]):
            parts.append((None, "- "))
            parts.append((key, s))
            if i < len(sentences) - 2:
                parts.append((None, "\n"))
    else:
        cut = rng.randint(2, max(2, len(sentences) - 1)) if style == "paragraphs" else len(sentences)
        for i, (key, s) in enumerate(sentences):
            if i:
                parts.append((None, "\n\n" if i == cut else " "))
            parts.append((key, s))
    text, facts = "", {}
    for key, piece in parts:
        if key is not None:
            facts[key] = (len(text), len(text) + len(piece))
        text += piece
    counter[0] += 1
    roll = rng.random()
    doc_id = (
        _slug(title)
        if roll < 0.5
        else (f"doc-{counter[0]}" if roll < 0.75 else hashlib.sha1(f"{title}{counter[0]}".encode()).hexdigest()[:12])
    )
    roll = rng.random()
    source = (
        title if roll < 0.5 else (f"{_slug(title)}.{rng.choice(['pdf', 'md', 'docx', 'txt'])}" if roll < 0.75 else None)
    )
    return Doc(doc_id, source, text, lang, e, facts)


def entity(rng: random.Random, kind: str, lang: Lang) -> Entity:
    e = NEW[kind](rng, lang)
    for key in keys_of(e):
        if key not in e.facts:
            e.facts[key] = ATTRS[key].draw(rng, e)
    return e


def relative(rng: random.Random, e: Entity, near: bool) -> Entity:
    """Another entity of `e`'s kind with its own values (a near-miss name when `near`)."""
    if near:
        other = near_miss(rng, e)
    elif e.kind == "product":  # the same type of product, so that it has the same attributes
        other = world.new_product(rng, e.home_lang, ptype=int(e.facts["type"]("en")))
    else:
        other = NEW[e.kind](rng, e.home_lang)
    for key in keys_of(other):
        if key not in other.facts or key == "acronym_of" and near:
            other.facts[key] = ATTRS[key].draw(rng, other)
    for key in keys_of(e):  # the same attribute never has the same value (or the question is ambiguous)
        if key in other.facts and other.facts[key]("en") == e.facts[key]("en"):
            for _ in range(5):
                other.facts[key] = ATTRS[key].draw(rng, other)
                if other.facts[key]("en") != e.facts[key]("en"):
                    break
    return other


# ------------------------------------------------------------------------------------------ examples


@dataclass
class Plan:
    """A question, its documents in retrieval order, and how to answer once the sources are numbered."""

    kind: str
    lang: Lang
    question: str
    docs: list[Doc]
    needs: list[tuple[Doc, str]]  # (document, attribute) whose sentence the answer copies: must be shown
    answer: Callable[[dict[tuple[str, str], int]], str]  # numbers of the needed sentences -> answer text
    history: list[dict[str, str]] = field(default_factory=list)
    agent: dict[str, Any] | None = None  # agent traces: tools, collections, arithmetic


def strip_end(sentence: str) -> str:
    return sentence.rstrip().rstrip(".")


def cite(sentence: str, n: int) -> str:
    """The sentence, its citation before the final stop: "X costs 3 euros [2]." """
    return f"{strip_end(sentence)} [{n}]."


def lower_first(sentence: str) -> str:
    """For embedding a sentence after "that": lower-case a leading article only (names keep capitals)."""
    first, _, rest = sentence.partition(" ")
    return f"{first.lower()} {rest}" if first in ("The", "Le", "La", "Les", "L'") else sentence


IDK = {"en": "I don't know: the sources do not say.", "fr": "Je ne sais pas : les sources ne le disent pas."}
YES_NO = {
    "en": (["Is it true that {s}?", "Can you confirm that {s}?", "Do the sources say that {s}?"], "Yes", "No"),
    "fr": (
        ["Est-il vrai que {s} ?", "Peux-tu confirmer que {s} ?", "Les sources disent-elles que {s} ?"],
        "Oui ",
        "Non ",
    ),
}
COMPARE = {
    "en": (
        ["Which has the {dir} {label}, {a} or {b}?", "Between {a} and {b}, which one has the {dir} {label}?"],
        {"higher": "higher", "lower": "lower"},
        "So {x} has the {dir} {label}.",
    ),
    "fr": (
        ["Lequel a {le} {label} {dir}, {a} ou {b} ?", "Entre {a} et {b}, lequel a {le} {label} {dir} ?"],
        {"higher": "le plus élevé", "lower": "le plus bas"},
        "Donc {x} a {le} {label} {dir}.",
    ),
}
ARITH = {
    "en": {
        "diff": (
            [
                "What is the difference in {label} between {a} and {b}?",
                "How big is the gap in {label} between {a} and {b}?",
                "How many more {unit} does {a} have than {b}?",
                "How much more {label} does {a} have than {b}?",
            ],
            "The difference is {r} {unit}. {fa} [{na}]. {fb} [{nb}].",
        ),
        "sum": (
            ["What is the combined {label} of {a} and {b}?", "What is the total {label} of {a} and {b} together?"],
            "Together that makes {r} {unit}. {fa} [{na}]. {fb} [{nb}].",
        ),
        "ratio": (
            ["How many times larger is the {label} of {a} than that of {b}?"],
            "About {r} times. {fa} [{na}]. {fb} [{nb}].",
        ),
    },
    "fr": {
        "diff": (
            [
                "Quelle est la différence de {label} entre {a} et {b} ?",
                "Quel écart de {label} y a-t-il entre {a} et {b} ?",
                "Combien de {unit} de plus pour {a} que pour {b} ?",
            ],
            "La différence est de {r} {unit}. {fa} [{na}]. {fb} [{nb}].",
        ),
        "sum": (
            ["{quel} est {le} {label} {total} de {a} et de {b} ?"],
            "Au total, cela fait {r} {unit}. {fa} [{na}]. {fb} [{nb}].",
        ),
        "ratio": (
            ["Combien de fois {le} {label} {of_a} est-{il} plus grand{e} que celui {of_b} ?"],
            "Environ {r} fois. {fa} [{na}]. {fb} [{nb}].",
        ),
    },
}
HISTORY_PREV = {"en": "Thanks. ", "fr": "Merci. "}


def _the(e: Entity, lang: Lang) -> str:
    return e.lang_forms[lang]["the"]


def _q(rng: random.Random, attr: str, e: Entity, lang: Lang) -> str:
    return fill(rng.choice(ATTRS[attr].ask[lang]), e, lang, "")


def _distractors(rng: random.Random, e: Entity, attr: str, lang: Lang, counter: list[int], n: int) -> list[Doc]:
    """Documents that look relevant but do not answer: the same attribute of other (near-miss) entities,
    other facts of the same entity, unrelated documents."""
    out: list[Doc] = []
    kinds = rng.sample(["same_attr", "near", "same_attr", "other_kind", "same_entity"], k=min(n, 5))
    for kind in kinds[:n]:
        if kind in ("same_attr", "near"):
            other = relative(rng, e, near=kind == "near")
            keys = [attr] + rng.sample([k for k in keys_of(other) if k != attr], k=min(3, len(keys_of(other)) - 1))
            rng.shuffle(keys)
            out.append(make_doc(rng, other, lang, keys, counter))
        elif kind == "same_entity":
            keys = rng.sample([k for k in keys_of(e) if k != attr], k=min(3, len(keys_of(e)) - 1))
            out.append(make_doc(rng, e, lang, keys, counter))
        else:
            other = entity(rng, rng.choice([k for k in NEW if k != e.kind]), lang)
            out.append(make_doc(rng, other, lang, rng.sample(keys_of(other), k=min(4, len(keys_of(other)))), counter))
    return out


def _support(rng: random.Random, e: Entity, attr: str, lang: Lang, counter: list[int]) -> Doc:
    others = [k for k in keys_of(e) if k != attr]
    keys = [attr] + rng.sample(others, k=min(rng.randint(2, 5), len(others)))
    rng.shuffle(keys)
    return make_doc(rng, e, lang, keys, counter)


def _place(rng: random.Random, support: list[Doc], distractors: list[Doc]) -> list[Doc]:
    """Retrieval order: the supporting document often first, but anywhere."""
    docs = list(distractors)
    rng.shuffle(docs)
    for d in support:
        docs.insert(0 if rng.random() < 0.4 else rng.randint(0, len(docs)), d)
    return docs


def plan_single(rng: random.Random, lang: Lang, counter: list[int], *, reverse: bool = False) -> Plan:
    kind = rng.choices(list(NEW), weights=[4, 2, 2, 2, 4, 1])[0]
    e = entity(rng, kind, lang)
    attrs = [k for k in keys_of(e) if not reverse or ATTRS[k].which]
    attr = rng.choice(attrs or keys_of(e))
    support = _support(rng, e, attr, lang, counter)
    docs = _place(rng, [support], _distractors(rng, e, attr, lang, counter, rng.randint(2, 4)))
    if reverse and ATTRS[attr].which:
        question = fill(rng.choice(ATTRS[attr].which[lang]), e, lang, e.facts[attr](lang))
    else:
        question = _q(rng, attr, e, lang)
    return Plan(
        "which" if reverse else ATTRS[attr].shape,
        lang,
        question,
        docs,
        [(support, attr)],
        lambda n: cite(support.sentence(attr), n[(support.doc_id, attr)]),
    )


def plan_yes_no(rng: random.Random, lang: Lang, counter: list[int]) -> Plan:
    kind = rng.choices(list(NEW), weights=[4, 2, 2, 2, 3, 1])[0]
    e = entity(rng, kind, lang)
    attr = rng.choice([k for k in keys_of(e) if k != "acronym_of"])
    support = _support(rng, e, attr, lang, counter)
    distractors = _distractors(rng, e, attr, lang, counter, rng.randint(2, 3))
    truth = rng.random() < 0.5
    value = e.facts[attr](lang)
    if not truth:  # the claimed value is another entity's (a distractor's when one has it)
        wrong = [d.entity.facts[attr](lang) for d in distractors if attr in d.facts]
        value = wrong[0] if wrong else ATTRS[attr].draw(rng, e)(lang)
        if value == e.facts[attr](lang):
            truth = True
    claim = strip_end(fill(rng.choice(ATTRS[attr].say[lang]), e, lang, value))
    templates, yes, no = YES_NO[lang]
    question = rng.choice(templates).format(s=lower_first(claim))
    docs = _place(rng, [support], distractors)
    word = yes if truth else no
    return Plan(
        "yes_no",
        lang,
        question,
        docs,
        [(support, attr)],
        lambda n: f"{word}: {cite(support.sentence(attr), n[(support.doc_id, attr)])}",
    )


def _pair(
    rng: random.Random, lang: Lang, counter: list[int], additive: bool = False
) -> tuple[Entity, Entity, str, Doc, Doc, list[Doc]]:
    while True:
        kind = rng.choices(["product", "person", "org", "place", "method", "event"], weights=[5, 1, 2, 2, 1, 2])[0]
        a = entity(rng, kind, lang)
        numeric = [k for k in keys_of(a) if ATTRS[k].comparable() and (ATTRS[k].additive or not additive)]
        if numeric:
            break
    attr = rng.choice(numeric)
    b = relative(rng, a, near=rng.random() < 0.3)
    if b.facts[attr].number == a.facts[attr].number:
        b.facts[attr] = world.quantity(
            (a.facts[attr].number or 0) + 7, a.facts[attr].unit["en"], a.facts[attr].unit["fr"]
        )
    da, db = _support(rng, a, attr, lang, counter), _support(rng, b, attr, lang, counter)
    return a, b, attr, da, db, _distractors(rng, a, attr, lang, counter, rng.randint(1, 2))


def plan_compare(rng: random.Random, lang: Lang, counter: list[int]) -> Plan:
    a, b, attr, da, db, distractors = _pair(rng, lang, counter)
    direction = rng.choice(["higher", "lower"])
    templates, words, conclusion = COMPARE[lang]
    label = ATTRS[attr].label[lang]
    le = ("la" if ATTRS[attr].fem_label else "le") if lang == "fr" else ""
    dir_word = words[direction]
    if lang == "fr" and ATTRS[attr].fem_label:
        dir_word = dir_word.replace("le plus élevé", "la plus élevée").replace("le plus bas", "la plus basse")
    question = rng.choice(templates).format(dir=dir_word, label=label, a=_the(a, lang), b=_the(b, lang), le=le)
    va, vb = a.facts[attr].number or 0, b.facts[attr].number or 0
    x = a if (va > vb) == (direction == "higher") else b
    docs = _place(rng, [da, db], distractors)

    def answer(n: dict[tuple[str, str], int]) -> str:
        first, second = sorted([(da, attr), (db, attr)], key=lambda p: n[(p[0].doc_id, attr)])
        end = conclusion.format(x=_the(x, lang), dir=dir_word, label=label, le=le)
        return (
            f"{cite(first[0].sentence(attr), n[(first[0].doc_id, attr)])} "
            f"{cite(second[0].sentence(attr), n[(second[0].doc_id, attr)])} {end}"
        )

    return Plan("compare", lang, question, docs, [(da, attr), (db, attr)], answer)


def plan_idk(rng: random.Random, lang: Lang, counter: list[int]) -> Plan:
    """The asked fact is in no source: other facts of the entity, the same fact of other entities."""
    kind = rng.choices(list(NEW), weights=[4, 2, 2, 2, 3, 1])[0]
    e = entity(rng, kind, lang)
    attr = rng.choice(keys_of(e))
    others = [k for k in keys_of(e) if k != attr]
    about = make_doc(rng, e, lang, rng.sample(others, k=min(rng.randint(2, 4), len(others))), counter)
    distractors = _distractors(rng, e, attr, lang, counter, rng.randint(2, 3))
    distractors = [d for d in distractors if not (d.entity is e and attr in d.facts)]
    docs = _place(rng, [] if rng.random() < 0.25 else [about], distractors)  # at times nothing about the entity
    return Plan("idk", lang, _q(rng, attr, e, lang), docs, [], lambda n: IDK[lang])


def plan_history(rng: random.Random, lang: Lang, counter: list[int]) -> Plan:
    """A follow-up: one earlier exchange about the same entity, then a question about another fact."""
    kind = rng.choices(list(NEW), weights=[4, 2, 2, 2, 3, 1])[0]
    e = entity(rng, kind, lang)
    first, second = rng.sample(keys_of(e), 2)
    support = _support(rng, e, second, lang, counter)
    if first not in support.facts:
        support = make_doc(rng, e, lang, [first, second], counter)
    docs = _place(rng, [support], _distractors(rng, e, second, lang, counter, rng.randint(2, 3)))
    prev_answer = cite(fill(rng.choice(ATTRS[first].say[lang]), e, lang, e.facts[first](lang)), rng.randint(1, 3))
    history = [{"role": "user", "content": _q(rng, first, e, lang)}, {"role": "assistant", "content": prev_answer}]
    question = (HISTORY_PREV[lang] if rng.random() < 0.3 else "") + _q(rng, second, e, lang)
    return Plan(
        "history",
        lang,
        question,
        docs,
        [(support, second)],
        lambda n: cite(support.sentence(second), n[(support.doc_id, second)]),
        history,
    )


def _how_many_more(rng: random.Random, attr: str, a: Entity, b: Entity) -> str | None:
    """A difference asked the way people ask it, from the attribute's own question: "How many hours does the
    X run on one charge?" -> "How many more hours does the X run on one charge than the Y?" (English)."""
    shapes = {"How many ": "How many more ", "How long ": "How much longer ", "How far ": "How much farther "}
    asks = [t for t in ATTRS[attr].ask["en"] if any(t.startswith(k) for k in shapes) and t.endswith("?")
            and not t.startswith("How many {")]
    if not asks:
        return None
    asked = fill(rng.choice(asks), a, "en", "")
    start = next(k for k in shapes if asked.startswith(k))
    return f"{shapes[start]}{asked[len(start):-1]} than {_the(b, 'en')}?"


def plan_agent(rng: random.Random, lang: Lang, counter: list[int]) -> Plan:
    """An agent trace: a fact question, a comparison, or arithmetic through the calculator."""
    roll = rng.random()
    tools = None if rng.random() < 0.6 else ["search_knowledge_base", "calculator"]
    collections = rng.sample(
        ["docs", "kb", "products", "notes", "wiki", "support", "archive", "team"], k=rng.choice((1, 1, 2))
    )
    if roll < 0.35:
        plan = plan_single(rng, lang, counter, reverse=rng.random() < 0.2)
        plan.kind, plan.agent = f"agent_{plan.kind}", {"tools": tools, "collections": collections}
        return plan
    if roll < 0.5:
        plan = plan_compare(rng, lang, counter)
        plan.kind, plan.agent = "agent_compare", {"tools": tools, "collections": collections}
        return plan
    op = rng.choices(["diff", "sum", "ratio"], weights=[6, 3, 1])[0]
    a, b, attr, da, db, distractors = _pair(rng, lang, counter, additive=op == "sum")
    va, vb = a.facts[attr].number or 0.0, b.facts[attr].number or 0.0
    if op in ("diff", "ratio") and va < vb:
        a, b, da, db, va, vb = b, a, db, da, vb, va
    label = ATTRS[attr].label[lang]
    templates, final = ARITH[lang][op]
    fem = ATTRS[attr].fem_label
    unit = a.facts[attr].unit.get(lang, "")
    more = _how_many_more(rng, attr, a, b) if op == "diff" and lang == "en" and rng.random() < 0.5 else None
    question = more or rng.choice([t for t in templates if unit or "{unit}" not in t]).format(
        label=label,
        unit=unit,
        a=_the(a, lang),
        b=_the(b, lang),
        le="la" if fem else "le",
        total="totale" if fem else "total",
        quel="Quelle" if fem else "Quel",
        of_a=a.lang_forms[lang]["of"],
        of_b=b.lang_forms[lang]["of"],
        il="elle" if fem else "il",
        e="e" if fem else "",
    )
    if lang == "fr" and op == "ratio" and fem:
        question = question.replace("que celui", "que celle")
    sign = {"diff": "-", "sum": "+", "ratio": "/"}[op]
    expression = f"{world.fmt_number(va, 'en').replace(',', '')} {sign} {world.fmt_number(vb, 'en').replace(',', '')}"
    if op == "ratio":
        expression = f"round({expression}, 2)"
    docs = _place(rng, [da, db], distractors)
    thought = {
        "diff": "I need the difference between {x} and {y}.",
        "sum": "I need the sum of {x} and {y}.",
        "ratio": "I need to divide {x} by {y}.",
    }[op]
    steps = {
        "thought": thought.format(x=world.fmt_number(va, "en"), y=world.fmt_number(vb, "en")),
        "expression": expression,
    }

    def answer(n: dict[tuple[str, str], int]) -> str:
        from services.rag.agent.tools.calculator import evaluate, format_number

        value = format_number(evaluate(expression))
        shown = value.replace(".", ",") if lang == "fr" else value
        return final.format(
            r=shown,
            unit=unit,
            fa=strip_end(da.sentence(attr)),
            na=n[(da.doc_id, attr)],
            fb=strip_end(db.sentence(attr)),
            nb=n[(db.doc_id, attr)],
        )

    return Plan(
        f"agent_{op}",
        lang,
        question,
        docs,
        [(da, attr), (db, attr)],
        answer,
        agent={"tools": tools, "collections": collections, **steps},
    )


PLANNERS: dict[str, tuple[float, Callable[..., Plan]]] = {
    "single": (0.50, plan_single),
    "which": (0.08, lambda rng, lang, c: plan_single(rng, lang, c, reverse=True)),
    "yes_no": (0.09, plan_yes_no),
    "compare": (0.08, plan_compare),
    "idk": (0.15, plan_idk),
    "history": (0.10, plan_history),
}


# ------------------------------------------------------------------------------------------ rendering


class Renderer:
    """Chunks documents, selects the context and writes the messages with the service's own functions."""

    def __init__(self, mode_weights: dict[str, float]):
        self.mode_weights = mode_weights

    async def __aenter__(self) -> Renderer:
        from services.embeddings.client import InProcessEmbeddings
        from services.embeddings.models import packaged_folder
        from services.embeddings.settings import EmbeddingsSettings
        from services.rag.chunking import Chunker
        from services.rag.settings import RagSettings

        self.settings = RagSettings()
        self.embeddings = await InProcessEmbeddings.load(EmbeddingsSettings())
        self.chunker = Chunker.for_model(packaged_folder("all-minilm-l6-v2"), self.embeddings.max_input_tokens)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.embeddings.aclose()

    async def hits(self, docs: list[Doc], collection: str) -> list[Any]:
        """Each document's chunks as retrieved hits, in the documents' order (scores decreasing)."""
        from inferag_protocol.rag import Hit
        from services.rag.chunking import ChunkingParams

        params = ChunkingParams(
            strategy="recursive", chunk_size=self.settings.chunk_size, chunk_overlap=self.settings.chunk_overlap
        )
        out = []
        for doc in docs:
            for i, chunk in enumerate(await self.chunker.chunk(doc.text, params)):
                out.append(
                    Hit(
                        id=f"{doc.doc_id}:{i}",
                        doc_id=doc.doc_id,
                        chunk_index=i,
                        text=chunk.text,
                        start=chunk.start,
                        end=chunk.end,
                        tokens=chunk.tokens,
                        source=doc.source,
                        collection=collection,
                        score=0.0,
                    )
                )
        for rank, hit in enumerate(out):
            hit.score = round(1.0 - 0.05 * rank, 3)
        return out[:5]  # rerank_top_n: the sources a query gives the model

    async def render(self, rng: random.Random, plan: Plan) -> tuple[list[dict[str, Any]], str] | None:
        from services.rag.context import select_context
        from services.rag.prompt import answer_messages

        collection = (plan.agent or {}).get("collections", ["docs"])[0]
        hits = await self.hits(plan.docs, collection)
        mode = rng.choices(list(self.mode_weights), weights=list(self.mode_weights.values()))[0]
        contexts = await select_context(
            plan.question,
            hits,
            self.embeddings,
            mode=mode,
            budget_tokens=self.settings.context_tokens,
            count_tokens=self.chunker.count_tokens,
        )
        numbers: dict[tuple[str, str], int] = {}
        for doc, attr in plan.needs:
            a, b = doc.facts[attr]
            for c in contexts:
                if c.hit.doc_id == doc.doc_id and any(s.start <= a and b <= s.end for s in c.spans):
                    numbers[(doc.doc_id, attr)] = c.number
                    break
            else:
                return None  # the supporting sentence is not in the prompt: nothing to learn from
        if plan.kind == "idk" and not contexts:
            return None
        answer = plan.answer(numbers)
        if plan.agent is None:
            return [
                *answer_messages(plan.question, contexts, plan.history),
                {"role": "assistant", "content": answer},
            ], mode
        return self.agent_messages(plan, contexts, answer), mode

    def agent_messages(self, plan: Plan, contexts: list[Any], answer: str) -> list[dict[str, Any]]:
        from services.rag.agent import react
        from services.rag.agent.serving import select_tools
        from services.rag.agent.tools.search_knowledge_base import observation

        agent = plan.agent or {}
        tools = select_tools(agent.get("tools"))
        entries = [(c.number, c) for c in contexts]
        max_chars = self.settings.agent_max_observation_chars
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": react.system_prompt(tools, agent.get("collections"))},
            {"role": "user", "content": plan.question},
            # the agent's own first step, not the model's: no loss on it
            {"role": "assistant", "content": react.first_search(plan.question), "train": False},
            {
                "role": "user",
                "content": react.observation_message(react.SEARCH, observation(entries, max_chars), last=False),
            },
        ]
        if "expression" in agent:
            from services.rag.agent.tools.calculator import evaluate, format_number

            expression = agent["expression"]
            call = json.dumps({"expression": expression})
            messages.append(
                {
                    "role": "assistant",
                    "content": f"Thought: {agent['thought']}\nAction: calculator\nAction Input: {call}",
                }
            )
            result = f"{expression} = {format_number(evaluate(expression))}"
            messages.append({"role": "user", "content": react.observation_message("calculator", result, last=False)})
        messages.append({"role": "assistant", "content": f"Thought: I know the answer.\nFinal Answer: {answer}"})
        return messages


# ------------------------------------------------------------------------------------------ main


async def build(
    out: Path, answers: int, agent: int, seed: int, val_fraction: float, french: float, chunks_share: float
) -> Counter[str]:
    rng = random.Random(seed)
    counter = [0]
    stats: Counter[str] = Counter()
    names, weights = list(PLANNERS), [w for w, _ in PLANNERS.values()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    async with Renderer({"sentences": 1 - chunks_share, "chunks": chunks_share}) as renderer:
        with tmp.open("w", encoding="utf-8") as f:
            for wanted, agentic in ((answers, False), (agent, True)):
                made = 0
                while made < wanted:
                    lang = "fr" if rng.random() < french else "en"
                    if agentic:
                        plan = plan_agent(rng, lang, counter)
                    else:
                        plan = PLANNERS[rng.choices(names, weights=weights)[0]][1](rng, lang, counter)
                    rendered = await renderer.render(rng, plan)
                    if rendered is None:
                        stats[f"dropped:{plan.kind}"] += 1
                        continue
                    messages, mode = rendered
                    split = "validation" if rng.random() < val_fraction else "train"
                    row = {"messages": messages, "split": split, "kind": plan.kind, "lang": lang, "context": mode}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    stats[plan.kind] += 1
                    stats[f"split:{split}"] += 1
                    stats[f"lang:{lang}"] += 1
                    made += 1
    tmp.replace(out)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/grounded/train.jsonl"))
    ap.add_argument("--answers", type=int, default=1200, help="/rag/query examples")
    ap.add_argument("--agent", type=int, default=240, help="ReAct agent traces")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.06)
    ap.add_argument("--french", type=float, default=0.5, help="share of French examples")
    ap.add_argument("--chunks-share", type=float, default=0.2, help="share rendered in `chunks` context mode")
    args = ap.parse_args()
    stats = asyncio.run(
        build(args.out, args.answers, args.agent, args.seed, args.val_fraction, args.french, args.chunks_share)
    )
    print(json.dumps({"out": str(args.out), **dict(sorted(stats.items()))}, indent=1))


if __name__ == "__main__":
    main()
