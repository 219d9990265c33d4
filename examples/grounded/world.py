"""An invented world for the grounded-answering training set: entities, their facts, and how to say them.

Everything here is made up (names from syllables, numbers drawn at random) so the model cannot answer
from memory: it has to read the sources. Each kind of entity (product, person, organisation, place,
method, event) has attributes; an attribute knows how to draw a value and how to state it and ask
about it in English and in French, in several wordings. `build.py` assembles documents, distractors,
questions and answers from these pieces.

Nothing here comes from `datasets/course/` (the evaluation set): the wordings are written for this file.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

Lang = str  # "en" | "fr"

# ------------------------------------------------------------------------------------------ names


def _words(text: str) -> list[str]:
    return text.split()


_SYL = _words(
    "zor blax quin tor vel mira dak lun bre sko tal vex nor phi gal ost ryn ke ba lo su ma ti fen gro "
    "hal ix jun kra ple dor vi sa ru mek tha bel cor dra fi gor hes ka lim mo nax or pra quel ris sol "
    "tes um var wen yl zan bri cal dun esk fal har iv jor kel mon nev orb pel rok sil tam ul vor"
)
_FIRST_F = _words(
    "Amara Ilse Léonie Nadia Priya Ingrid Clémence Anouk Greta Irene Lena Noor Paloma Sanne Ulla "
    "Wanda Yara Aurélie Célia Elodie Gaëlle Hélène"
)
_FIRST_M = _words(
    "Tomasz Joris Baptiste Oskar Mateo Yusuf Farid Hugo Kofi Marius Otto Rafael Tobias Viktor Xavier "
    "Zeno Bastien Damien Florent"
)
_FIRST = _FIRST_F + _FIRST_M
_ORG_SUFFIX_EN = ["Labs", "Industries", "Systems", "Works", "Group", "Foundation", "Institute", "Collective"]
_ORG_PREFIX_FR = ["Société", "Institut", "Ateliers", "Groupe", "Fondation", "Laboratoire", "Compagnie"]
_COUNTRIES = {
    "en": [
        "Norway",
        "Portugal",
        "Chile",
        "Canada",
        "Japan",
        "Kenya",
        "Finland",
        "Peru",
        "Iceland",
        "Vietnam",
        "Morocco",
        "Estonia",
        "Uruguay",
        "Ireland",
        "Slovenia",
    ],
    "fr": [
        "Norvège",
        "Portugal",
        "Chili",
        "Canada",
        "Japon",
        "Kenya",
        "Finlande",
        "Pérou",
        "Islande",
        "Vietnam",
        "Maroc",
        "Estonie",
        "Uruguay",
        "Irlande",
        "Slovénie",
    ],
}
_COUNTRIES_IN = {  # with the preposition each language puts before it
    "en": [f"in {c}" for c in _COUNTRIES["en"]],
    "fr": [
        "en Norvège",
        "au Portugal",
        "au Chili",
        "au Canada",
        "au Japon",
        "au Kenya",
        "en Finlande",
        "au Pérou",
        "en Islande",
        "au Vietnam",
        "au Maroc",
        "en Estonie",
        "en Uruguay",
        "en Irlande",
        "en Slovénie",
    ],
}
_MONTHS = {
    "en": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
    "fr": [
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ],
}
_COLOURS = {
    "en": ["red", "green", "blue", "black", "white", "orange", "grey", "yellow", "purple", "teal"],
    "fr": ["rouge", "vert", "bleu", "noir", "blanc", "orange", "gris", "jaune", "violet", "turquoise"],
}
_MATERIALS = {
    "en": ["recycled aluminium", "oak", "ceramic", "carbon fibre", "bamboo", "stainless steel", "cork", "glass"],
    "fr": [
        "aluminium recyclé",
        "chêne",
        "céramique",
        "fibre de carbone",
        "bambou",
        "acier inoxydable",
        "liège",
        "verre",
    ],
}
_FIELDS = {
    "en": [
        "marine biology",
        "glaciology",
        "acoustics",
        "soil chemistry",
        "robotics",
        "linguistics",
        "astronomy",
        "textile design",
        "volcanology",
        "cartography",
    ],
    "fr": [
        "biologie marine",
        "glaciologie",
        "acoustique",
        "chimie des sols",
        "robotique",
        "linguistique",
        "astronomie",
        "design textile",
        "volcanologie",
        "cartographie",
    ],
}
_JOBS = {  # French: masculine, feminine
    "en": [
        "architect",
        "composer",
        "chemist",
        "novelist",
        "engineer",
        "photographer",
        "botanist",
        "chef",
        "mathematician",
        "sculptor",
    ],
    "fr": [
        ("architecte", "architecte"),
        ("compositeur", "compositrice"),
        ("chimiste", "chimiste"),
        ("romancier", "romancière"),
        ("ingénieur", "ingénieure"),
        ("photographe", "photographe"),
        ("botaniste", "botaniste"),
        ("chef cuisinier", "cheffe cuisinière"),
        ("mathématicien", "mathématicienne"),
        ("sculpteur", "sculptrice"),
    ],
}
_WORDS_EN = _words(
    "Adaptive Sparse Gated Recursive Token Vector Memory Layer Network Encoder Decoder Attention "
    "Residual Quantized Latent Routing Kernel Unit Graph Hybrid Prototype Stochastic Embedding "
    "Transfer Bidirectional Contrastive Hierarchical Modular Normalized Parallel Retrieval Sequence "
    "Weighted"
)
_WORDS_FR = _words(
    "Réseau Adaptatif Mémoire Vecteur Couche Encodeur Décodeur Attention Latent Routage Quantifié "
    "Unité Graphe Hybride Prototype Stochastique Plongement Transfert Hiérarchique Modulaire "
    "Normalisé Parallèle Séquence Pondéré Contrastif Récurrent Local"
)
_TASKS = {
    "en": [
        "translation",
        "speech recognition",
        "weather forecasting",
        "protein folding",
        "image captioning",
        "fraud detection",
        "music generation",
        "document search",
        "code completion",
        "crop monitoring",
    ],
    "fr": [
        "la traduction",
        "la reconnaissance vocale",
        "la prévision météo",
        "le repliement des protéines",
        "le sous-titrage d'images",
        "la détection de fraude",
        "la génération de musique",
        "la recherche documentaire",
        "la complétion de code",
        "le suivi des cultures",
    ],
}


def syllable_name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


def person_name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {syllable_name(rng, rng.choice((2, 3)))}"


def org_name(rng: random.Random, lang: Lang) -> str:
    if lang == "fr" and rng.random() < 0.6:
        return f"{rng.choice(_ORG_PREFIX_FR)} {syllable_name(rng)}"
    return f"{syllable_name(rng)} {rng.choice(_ORG_SUFFIX_EN)}"


def town_name(rng: random.Random) -> str:
    name = syllable_name(rng, rng.choice((2, 2, 3)))
    roll = rng.random()
    if roll < 0.12:
        return f"Saint-{name}"
    if roll < 0.2:
        return f"{name}-sur-{syllable_name(rng)}"
    return name


def acronym(rng: random.Random, lang: Lang, letters: str | None = None) -> tuple[str, str]:
    """(acronym, expansion): initials of 3 or 4 technical words (starting with `letters` where it can)."""
    pool = _WORDS_FR if lang == "fr" else _WORDS_EN
    if letters:
        words = []
        for letter in letters:
            fits = [w for w in pool if w[0].upper() == letter and w not in words]
            words.append(rng.choice(fits or [w for w in pool if w not in words]))
    else:
        words = rng.sample(pool, rng.choice((3, 3, 4)))
    return "".join(w[0].upper() for w in words), " ".join(words)


# ------------------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class Value:
    text: dict[Lang, str]  # as written in each language, unit included
    number: float | None = None  # for comparisons and arithmetic
    unit: dict[Lang, str] = field(default_factory=dict)  # plural unit word, for arithmetic answers

    def __call__(self, lang: Lang) -> str:
        return self.text[lang]


def fmt_number(n: float, lang: Lang) -> str:
    """12500 → "12,500" / "12 500"; 1.5 → "1.5" / "1,5"."""
    if float(n).is_integer():
        whole = f"{int(n):,}"
        return whole.replace(",", " ") if lang == "fr" else whole
    text = f"{n:g}"
    return text.replace(".", ",") if lang == "fr" else text


def quantity(n: float, en: str, fr: str) -> Value:
    return Value({"en": f"{fmt_number(n, 'en')} {en}", "fr": f"{fmt_number(n, 'fr')} {fr}"}, n, {"en": en, "fr": fr})


def plain(en: str, fr: str | None = None) -> Value:
    return Value({"en": en, "fr": fr if fr is not None else en})


def a_date(rng: random.Random, y0: int = 1950, y1: int = 2024) -> Value:
    d, m, y = rng.randint(1, 28), rng.randrange(12), rng.randint(y0, y1)
    day_fr = "1er" if d == 1 else str(d)
    return Value({"en": f"{_MONTHS['en'][m]} {d}, {y}", "fr": f"{day_fr} {_MONTHS['fr'][m]} {y}"}, float(y))


def a_year(rng: random.Random, y0: int = 1890, y1: int = 2024) -> Value:
    y = rng.randint(y0, y1)
    return Value({"en": str(y), "fr": str(y)}, float(y))


def paired(rng: random.Random, table: dict[Lang, list[str]]) -> Value:
    i = rng.randrange(len(table["en"]))
    return Value({"en": table["en"][i], "fr": table["fr"][i]})


def place(rng: random.Random) -> Value:
    i = rng.randrange(len(_COUNTRIES["en"]))
    town = town_name(rng)
    return Value({"en": f"{town}, {_COUNTRIES['en'][i]}", "fr": f"{town} ({_COUNTRIES['fr'][i]})"})


# ------------------------------------------------------------------------------------------ entities


@dataclass
class Entity:
    kind: str
    name: str
    lang_forms: dict[Lang, dict[str, str]]  # per language: The, the, of (du/de la/d'), e (agreement), noun
    facts: dict[str, Value] = field(default_factory=dict)
    home_lang: Lang = "en"

    def slots(self, lang: Lang) -> dict[str, str]:
        return {"name": self.name, **self.lang_forms[lang]}


def _forms_fr(name: str, noun: str, fem: bool, article: bool = True) -> dict[str, str]:
    if not article:
        of = f"d'{name}" if name[0].lower() in "aeiouéèêhy" else f"de {name}"
        return {
            "The": name,
            "the": name,
            "of": of,
            "e": "e" if fem else "",
            "noun": noun,
            "un": "une" if fem else "un",
            "il": "elle" if fem else "il",
        }
    the = f"la {noun} {name}" if fem else f"le {noun} {name}"
    of = f"de la {noun} {name}" if fem else f"du {noun} {name}"
    return {
        "The": the[0].upper() + the[1:],
        "the": the,
        "of": of,
        "e": "e" if fem else "",
        "noun": noun,
        "un": "une" if fem else "un",
        "il": "elle" if fem else "il",
    }


def _forms_en(name: str, noun: str, article: bool = True) -> dict[str, str]:
    a = "an" if noun[:1].lower() in "aeiou" and noun else "a"
    if not article:
        return {"The": name, "the": name, "of": f"of {name}", "e": "", "noun": noun, "un": a, "il": "it"}
    return {
        "The": f"The {name}",
        "the": f"the {name}",
        "of": f"of the {name}",
        "e": "",
        "noun": noun,
        "un": a,
        "il": "it",
    }


# Product categories: English noun, French noun, feminine?, attribute keys that apply.
PRODUCT_TYPES = [
    ("kettle", "bouilloire", True, ["capacity", "boil_time"]),
    ("headset", "casque", False, ["battery", "colours"]),
    ("e-bike", "vélo électrique", False, ["battery", "range", "top_speed"]),
    ("drone", "drone", False, ["flight_time", "range", "top_speed"]),
    ("smartwatch", "montre connectée", True, ["battery", "screen", "colours"]),
    ("coffee machine", "machine à café", True, ["capacity", "pressure"]),
    ("tablet", "tablette", True, ["battery", "screen", "storage"]),
    ("speaker", "enceinte", True, ["battery", "power", "colours"]),
    ("telescope", "télescope", False, ["aperture", "magnification"]),
    ("lamp", "lampe", True, ["power", "material"]),
]
_PRODUCT_COMMON = ["maker", "made_in", "price", "weight", "launch", "warranty", "material", "units_sold"]


def new_product(rng: random.Random, lang: Lang, brand: str | None = None, ptype: int | None = None) -> Entity:
    ptype = rng.randrange(len(PRODUCT_TYPES)) if ptype is None else ptype
    noun_en, noun_fr, fem, extra = PRODUCT_TYPES[ptype]
    brand = brand or syllable_name(rng)
    model = rng.choice(
        [
            str(rng.choice((2, 3, 4, 5, 7, 9)) * 10 ** rng.randint(2, 3)),
            rng.choice("XSQRZ"),
            f"Pro {rng.randint(2, 9)}",
            f"S{rng.randint(1, 12)}",
            f"Air {rng.randint(2, 6)}",
        ]
    )
    name = f"{brand} {model}"
    e = Entity("product", name, {"en": _forms_en(name, noun_en), "fr": _forms_fr(name, noun_fr, fem)}, home_lang=lang)
    e.facts["type"] = plain(str(ptype))
    e.facts["_keys"] = plain(" ".join(_PRODUCT_COMMON + extra))
    return e


def near_miss(rng: random.Random, e: Entity) -> Entity:
    """Another entity of the same kind whose name is almost the same (same brand, another model)."""
    if e.kind == "product":
        brand, _, model = e.name.partition(" ")
        ptype = int(e.facts["type"]("en"))
        other = new_product(rng, e.home_lang, brand, ptype)
        if other.name == e.name:
            other = new_product(rng, e.home_lang, brand + "a", ptype)
        return other
    if e.kind == "person":
        first, _, last = e.name.partition(" ")
        other = new_person(rng, e.home_lang)
        other.name = f"{rng.choice([f for f in _FIRST if f != first])} {last}"
        other.lang_forms = _person_forms(other.name)
        return other
    if e.kind == "method":
        other = new_method(rng, e.home_lang)
        base = e.name.split("-")[0]
        other.name = f"{base}-{rng.randint(2, 9)}" if "-" not in e.name else base
        if other.name == e.name:
            other.name = f"{base}-X"
        other.facts["acronym_of"] = plain(acronym(rng, e.home_lang, base)[1])
        fem = other.lang_forms["fr"]["e"] == "e"
        other.lang_forms = {
            "en": _forms_en(other.name, other.lang_forms["en"]["noun"], False),
            "fr": _forms_fr(other.name, other.lang_forms["fr"]["noun"], fem),
        }
        return other
    return NEW[e.kind](rng, e.home_lang)


def _person_forms(name: str) -> dict[Lang, dict[str, str]]:
    fem = name.split(" ")[0] in _FIRST_F
    return {
        "en": _forms_en(name, "", False) | {"his": "her" if fem else "his", "il": "she" if fem else "he"},
        "fr": _forms_fr(name, "", fem, False),
    }


def new_person(rng: random.Random, lang: Lang) -> Entity:
    name = person_name(rng)
    e = Entity("person", name, _person_forms(name), home_lang=lang)
    e.facts["_keys"] = plain("job born_year born_in employer award books quote lab_field")
    return e


def new_org(rng: random.Random, lang: Lang) -> Entity:
    name = org_name(rng, lang)
    e = Entity("org", name, {"en": _forms_en(name, "", False), "fr": _forms_fr(name, "", True, False)}, home_lang=lang)
    e.facts["_keys"] = plain("founded founder hq employees revenue org_field subsidiaries")
    return e


def new_place(rng: random.Random, lang: Lang) -> Entity:
    name = town_name(rng)
    e = Entity(
        "place",
        name,
        {"en": _forms_en(name, "town", False), "fr": _forms_fr(name, "ville", True, False)},
        home_lang=lang,
    )
    e.facts["_keys"] = plain("country population altitude river settled mayor festival_month twin")
    return e


METHOD_NOUNS = [
    ("model", "modèle", False),
    ("method", "méthode", True),
    ("architecture", "architecture", True),
    ("algorithm", "algorithme", False),
    ("benchmark", "benchmark", False),
    ("protocol", "protocole", False),
]


def new_method(rng: random.Random, lang: Lang) -> Entity:
    short, long = acronym(rng, lang)
    noun_en, noun_fr, fem = rng.choice(METHOD_NOUNS)
    name = short if rng.random() < 0.6 else f"{short}-{rng.randint(2, 9)}"
    e = Entity(
        "method", name, {"en": _forms_en(name, noun_en, False), "fr": _forms_fr(name, noun_fr, fem)}, home_lang=lang
    )
    e.facts["acronym_of"] = plain(long)
    e.facts["_keys"] = plain("acronym_of layers parameters introduced introduced_by gain task context components")
    return e


def new_event(rng: random.Random, lang: Lang) -> Entity:
    kind_en, kind_fr, fem = rng.choice(
        [
            ("festival", "festival", False),
            ("fair", "foire", True),
            ("regatta", "régate", True),
            ("conference", "conférence", True),
        ]
    )
    name = (
        f"{syllable_name(rng)} {rng.choice(['Days', 'Week', 'Meet', 'Summit'])}"
        if lang == "en" and rng.random() < 0.5
        else syllable_name(rng)
    )
    forms = {"en": _forms_en(name, kind_en), "fr": _forms_fr(name, kind_fr, fem)}
    forms["en"] |= {"The": f"The {name} {kind_en}", "the": f"the {name} {kind_en}", "of": f"of the {name} {kind_en}"}
    e = Entity("event", name, forms, home_lang=lang)
    e.facts["_keys"] = plain("held_in month since visitors organiser edition_count")
    return e


NEW: dict[str, Callable[[random.Random, Lang], Entity]] = {
    "product": new_product,
    "person": new_person,
    "org": new_org,
    "place": new_place,
    "method": new_method,
    "event": new_event,
}


# ------------------------------------------------------------------------------------------ attributes


@dataclass
class Attr:
    key: str
    shape: str  # what | when | how_many | who | where | define | list
    draw: Callable[[random.Random, Entity], Value]
    say: dict[Lang, list[str]]  # sentences stating the fact: {The} {the} {of} {e} {v} {noun} {un}
    ask: dict[Lang, list[str]]  # questions asking for the value
    which: dict[Lang, list[str]] = field(default_factory=dict)  # questions asking for the entity, given {v}
    label: dict[Lang, str] = field(default_factory=dict)  # for compare/arithmetic: "weight" / "poids"
    fem_label: bool = False  # French label gender ("la population")
    additive: bool = False  # a sum of two values makes sense (units sold, employees, visitors)

    def comparable(self) -> bool:
        return bool(self.label)


def _num(lo: int, hi: int, en: str, fr: str, step: int = 1) -> Callable[[random.Random, Entity], Value]:
    return lambda rng, e: quantity(rng.randrange(lo, hi, step), en, fr)


def _dec(lo: float, hi: float, en: str, fr: str) -> Callable[[random.Random, Entity], Value]:
    return lambda rng, e: quantity(round(rng.uniform(lo, hi), 1), en, fr)


def _other_name(make: Callable[[random.Random, Lang], Entity]) -> Callable[[random.Random, Entity], Value]:
    return lambda rng, e: plain(make(rng, e.home_lang).name)


def _parameters(rng: random.Random, e: Entity) -> Value:
    if rng.random() < 0.5:
        n = rng.choice((12, 45, 70, 110, 220, 340, 560, 780, 910))
        return Value({"en": f"{n} million parameters", "fr": f"{n} millions de paramètres"}, float(n))
    n = rng.choice((1.3, 2.7, 7, 13, 34, 70, 175, 405))
    return Value(
        {"en": f"{fmt_number(n, 'en')} billion parameters", "fr": f"{fmt_number(n, 'fr')} milliards de paramètres"}, n
    )


def _components(rng: random.Random, e: Entity) -> Value:
    words_en = ["a router", "an encoder", "a memory bank", "a scorer", "a cache", "a planner", "a filter", "a decoder"]
    words_fr = [
        "un routeur",
        "un encodeur",
        "une banque de mémoire",
        "un évaluateur",
        "un cache",
        "un planificateur",
        "un filtre",
        "un décodeur",
    ]
    idx = rng.sample(range(len(words_en)), 3)
    return Value(
        {
            "en": f"{words_en[idx[0]]}, {words_en[idx[1]]} and {words_en[idx[2]]}",
            "fr": f"{words_fr[idx[0]]}, {words_fr[idx[1]]} et {words_fr[idx[2]]}",
        }
    )


def _quote(rng: random.Random, e: Entity) -> Value:
    en = [
        "A map is a promise the land never made",
        "Every bridge remembers the river",
        "Silence is the loudest draft",
        "The tide keeps no calendar",
        "Glass forgives nothing and shows everything",
        "Salt is the memory of the sea",
        "A lamp argues with the night",
        "Stone is patient because it is old",
    ]
    fr = [
        "Une carte est une promesse que la terre n'a jamais faite",
        "Chaque pont se souvient de la rivière",
        "Le silence est le brouillon le plus bruyant",
        "La marée ne tient pas d'agenda",
        "Le verre ne pardonne rien et montre tout",
        "Le sel est la mémoire de la mer",
        "Une lampe se dispute avec la nuit",
        "La pierre est patiente parce qu'elle est vieille",
    ]
    i = rng.randrange(len(en))
    return Value({"en": f"“{en[i]}”", "fr": f"« {fr[i]} »"})


ATTRS: dict[str, Attr] = {}


def _attr(a: Attr) -> None:
    ATTRS[a.key] = a


# ---- products
_attr(
    Attr(
        "maker",
        "who",
        _other_name(new_org),
        {
            "en": ["{The} is made by {v}.", "{v} manufactures {the}.", "{The} is built by {v}."],
            "fr": ["{The} est fabriqué{e} par {v}.", "{v} fabrique {the}.", "{The} est produit{e} par {v}."],
        },
        {
            "en": ["Who makes {the}?", "Which company manufactures {the}?", "Who is the maker {of}?"],
            "fr": ["Qui fabrique {the} ?", "Quelle entreprise produit {the} ?", "Qui est le fabricant {of} ?"],
        },
        {"en": ["Which {noun} is made by {v}?"], "fr": ["Quel produit est fabriqué par {v} ?"]},
    )
)
_attr(
    Attr(
        "made_in",
        "where",
        lambda rng, e: place(rng),
        {
            "en": ["{The} is assembled in {v}.", "The factory {of} is in {v}."],
            "fr": ["{The} est assemblé{e} à {v}.", "L'usine {of} se trouve à {v}."],
        },
        {
            "en": ["Where is {the} assembled?", "Where is {the} made?", "In which town is {the} produced?"],
            "fr": [
                "Où {the} est-{il} assemblé{e} ?",
                "Dans quelle ville est fabriqué{e} {the} ?",
                "Où se trouve l'usine {of} ?",
            ],
        },
    )
)
_attr(
    Attr(
        "price",
        "how_many",
        _num(39, 2400, "euros", "euros"),
        {
            "en": ["{The} costs {v}.", "{The} sells for {v}.", "The price {of} is {v}."],
            "fr": ["{The} coûte {v}.", "{The} est vendu{e} {v}.", "Le prix {of} est de {v}."],
        },
        {
            "en": ["How much does {the} cost?", "What is the price {of}?", "How much is {the}?"],
            "fr": ["Combien coûte {the} ?", "Quel est le prix {of} ?", "À quel prix est vendu{e} {the} ?"],
        },
        {"en": ["Which {noun} costs {v}?"], "fr": ["Quel produit coûte {v} ?"]},
        {"en": "price", "fr": "prix"},
    )
)
_attr(
    Attr(
        "weight",
        "how_many",
        _num(90, 4800, "grams", "grammes", 10),
        {
            "en": ["{The} weighs {v}.", "{The} has a weight of {v}."],
            "fr": ["{The} pèse {v}.", "Le poids {of} est de {v}."],
        },
        {
            "en": ["How much does {the} weigh?", "What is the weight {of}?", "How heavy is {the}?"],
            "fr": ["Combien pèse {the} ?", "Quel est le poids {of} ?"],
        },
        {"en": ["Which {noun} weighs {v}?"], "fr": ["Quel produit pèse {v} ?"]},
        {"en": "weight", "fr": "poids"},
    )
)
_attr(
    Attr(
        "launch",
        "when",
        lambda rng, e: a_date(rng, 2004, 2024),
        {
            "en": ["{The} was launched on {v}.", "{The} went on sale on {v}."],
            "fr": ["{The} a été lancé{e} le {v}.", "{The} est sorti{e} le {v}."],
        },
        {
            "en": ["When was {the} launched?", "When did {the} go on sale?", "What is the release date {of}?"],
            "fr": [
                "Quand {the} a-t-{il} été lancé{e} ?",
                "Quelle est la date de sortie {of} ?",
                "Quand est sorti{e} {the} ?",
            ],
        },
    )
)
_attr(
    Attr(
        "warranty",
        "how_many",
        lambda rng, e: quantity(rng.randint(1, 10), "years", "ans"),
        {
            "en": ["{The} comes with a warranty of {v}.", "The warranty {of} lasts {v}."],
            "fr": ["{The} est garanti{e} {v}.", "La garantie {of} est de {v}."],
        },
        {
            "en": ["How long is the warranty {of}?", "What warranty does {the} have?"],
            "fr": ["Combien de temps dure la garantie {of} ?", "Quelle est la garantie {of} ?"],
        },
        label={"en": "warranty", "fr": "garantie"},
        fem_label=True,
    )
)
_attr(
    Attr(
        "material",
        "what",
        lambda rng, e: paired(rng, _MATERIALS),
        {
            "en": ["The body {of} is made of {v}.", "{The} has a {v} casing."],
            "fr": ["Le boîtier {of} est en {v}.", "{The} a une coque en {v}."],
        },
        {
            "en": ["What is {the} made of?", "What material is the body {of}?"],
            "fr": ["En quelle matière est {the} ?", "De quel matériau est fait le boîtier {of} ?"],
        },
    )
)
_attr(
    Attr(
        "units_sold",
        "how_many",
        _num(1200, 980000, "units", "exemplaires", 100),
        {
            "en": ["{v} of {the} have been sold.", "{The} has sold {v} so far."],
            "fr": ["{v} {of} ont été vendus.", "{The} s'est vendu{e} à {v}."],
        },
        {
            "en": ["How many units {of} have been sold?", "How many {the} were sold?"],
            "fr": ["Combien d'exemplaires {of} ont été vendus ?", "À combien d'exemplaires s'est vendu{e} {the} ?"],
        },
        label={"en": "sales", "fr": "ventes"},
        fem_label=True,
        additive=True,
    )
)
_attr(
    Attr(
        "capacity",
        "how_many",
        _dec(0.5, 2.5, "litres", "litres"),
        {
            "en": ["{The} holds {v}.", "The tank {of} holds {v}."],
            "fr": ["{The} contient {v}.", "Le réservoir {of} contient {v}."],
        },
        {
            "en": ["How much does {the} hold?", "What is the capacity {of}?"],
            "fr": ["Quelle est la contenance {of} ?", "Combien contient {the} ?"],
        },
        label={"en": "capacity", "fr": "contenance"},
        fem_label=True,
    )
)
_attr(
    Attr(
        "boil_time",
        "how_many",
        _num(35, 240, "seconds", "secondes"),
        {"en": ["{The} boils a litre of water in {v}."], "fr": ["{The} fait bouillir un litre d'eau en {v}."]},
        {
            "en": ["How fast does {the} boil a litre of water?", "How long does {the} take to boil water?"],
            "fr": ["En combien de temps {the} fait-{il} bouillir un litre d'eau ?"],
        },
    )
)
_attr(
    Attr(
        "battery",
        "how_many",
        _num(6, 90, "hours", "heures"),
        {
            "en": ["The battery {of} lasts {v}.", "{The} runs for {v} on one charge."],
            "fr": ["La batterie {of} dure {v}.", "{The} tient {v} sur une charge."],
        },
        {
            "en": [
                "How long does the battery {of} last?",
                "What is the battery life {of}?",
                "How many hours does {the} run on one charge?",
            ],
            "fr": ["Combien de temps dure la batterie {of} ?", "Quelle est l'autonomie {of} ?"],
        },
        {"en": ["Which {noun} runs for {v} on one charge?"], "fr": ["Quel produit tient {v} sur une charge ?"]},
        {"en": "battery life", "fr": "autonomie"},
        fem_label=True,
    )
)
_attr(
    Attr(
        "range",
        "how_many",
        _num(3, 160, "kilometres", "kilomètres"),
        {
            "en": ["{The} has a range of {v}.", "{The} can travel {v}."],
            "fr": ["{The} a une portée de {v}.", "{The} peut parcourir {v}."],
        },
        {
            "en": ["What is the range {of}?", "How far can {the} go?"],
            "fr": ["Quelle est la portée {of} ?", "Quelle distance peut parcourir {the} ?"],
        },
        label={"en": "range", "fr": "portée"},
        fem_label=True,
    )
)
_attr(
    Attr(
        "top_speed",
        "how_many",
        _num(18, 95, "km/h", "km/h"),
        {"en": ["{The} reaches a top speed of {v}."], "fr": ["{The} atteint une vitesse maximale de {v}."]},
        {
            "en": ["What is the top speed {of}?", "How fast can {the} go?"],
            "fr": ["Quelle est la vitesse maximale {of} ?"],
        },
        label={"en": "top speed", "fr": "vitesse maximale"},
        fem_label=True,
    )
)
_attr(
    Attr(
        "flight_time",
        "how_many",
        _num(12, 75, "minutes", "minutes"),
        {"en": ["{The} can fly for {v}."], "fr": ["{The} peut voler pendant {v}."]},
        {"en": ["How long can {the} fly?"], "fr": ["Combien de temps {the} peut-{il} voler ?"]},
        label={"en": "flight time", "fr": "autonomie de vol"},
        fem_label=True,
    )
)
_attr(
    Attr(
        "screen",
        "how_many",
        _dec(1.2, 13.9, "inches", "pouces"),
        {"en": ["{The} has a {v} screen."], "fr": ["{The} a un écran de {v}."]},
        {
            "en": ["How big is the screen {of}?", "What is the screen size {of}?"],
            "fr": ["Quelle est la taille de l'écran {of} ?"],
        },
    )
)
_attr(
    Attr(
        "storage",
        "how_many",
        lambda rng, e: quantity(rng.choice((32, 64, 128, 256, 512)), "GB", "Go"),
        {"en": ["{The} offers {v} of storage."], "fr": ["{The} offre {v} de stockage."]},
        {"en": ["How much storage does {the} have?"], "fr": ["Combien de stockage offre {the} ?"]},
    )
)
_attr(
    Attr(
        "colours",
        "how_many",
        lambda rng, e: quantity(rng.randint(2, 9), "colours", "coloris"),
        {"en": ["{The} comes in {v}."], "fr": ["{The} existe en {v}."]},
        {"en": ["In how many colours does {the} come?"], "fr": ["En combien de coloris existe {the} ?"]},
    )
)
_attr(
    Attr(
        "pressure",
        "how_many",
        _num(9, 20, "bar", "bars"),
        {"en": ["{The} brews at a pressure of {v}."], "fr": ["{The} infuse à une pression de {v}."]},
        {"en": ["At what pressure does {the} brew?"], "fr": ["À quelle pression infuse {the} ?"]},
    )
)
_attr(
    Attr(
        "power",
        "how_many",
        _num(5, 400, "watts", "watts"),
        {
            "en": ["{The} draws {v}.", "{The} has a power of {v}."],
            "fr": ["{The} consomme {v}.", "La puissance {of} est de {v}."],
        },
        {
            "en": ["How much power does {the} draw?", "What is the power {of}?"],
            "fr": ["Quelle est la puissance {of} ?"],
        },
        label={"en": "power", "fr": "puissance"},
        fem_label=True,
    )
)
_attr(
    Attr(
        "aperture",
        "how_many",
        _num(60, 300, "millimetres", "millimètres", 5),
        {"en": ["{The} has an aperture of {v}."], "fr": ["{The} a une ouverture de {v}."]},
        {"en": ["What is the aperture {of}?"], "fr": ["Quelle est l'ouverture {of} ?"]},
    )
)
_attr(
    Attr(
        "magnification",
        "how_many",
        lambda rng, e: plain(f"{rng.randint(20, 400)}x"),
        {"en": ["{The} magnifies up to {v}."], "fr": ["{The} grossit jusqu'à {v}."]},
        {"en": ["How much does {the} magnify?"], "fr": ["Quel est le grossissement maximal {of} ?"]},
    )
)


# ---- people
def _job(rng: random.Random, e: Entity) -> Value:
    i = rng.randrange(len(_JOBS["en"]))
    return Value({"en": _JOBS["en"][i], "fr": _JOBS["fr"][i][1 if e.lang_forms["fr"]["e"] else 0]})


_attr(
    Attr(
        "job",
        "what",
        _job,
        {
            "en": ["{The} is {un} {v}.", "{The} works as {un} {v}."],
            "fr": ["{The} est {v}.", "{The} travaille comme {v}."],
        },
        {
            "en": ["What does {the} do for a living?", "What is the profession {of}?"],
            "fr": ["Quel est le métier {of} ?", "Que fait {the} dans la vie ?"],
        },
    )
)
_attr(
    Attr(
        "born_year",
        "when",
        lambda rng, e: a_year(rng, 1921, 1999),
        {"en": ["{The} was born in {v}."], "fr": ["{The} est né{e} en {v}."]},
        {
            "en": ["When was {the} born?", "In what year was {the} born?"],
            "fr": ["Quand est né{e} {the} ?", "En quelle année est né{e} {the} ?"],
        },
    )
)
_attr(
    Attr(
        "born_in",
        "where",
        lambda rng, e: place(rng),
        {
            "en": ["{The} grew up in {v}.", "{The} was born in {v}."],
            "fr": ["{The} a grandi à {v}.", "{The} est né{e} à {v}."],
        },
        {
            "en": ["Where did {the} grow up?", "Where is {the} from?"],
            "fr": ["Où a grandi {the} ?", "D'où vient {the} ?"],
        },
    )
)
_attr(
    Attr(
        "employer",
        "who",
        _other_name(new_org),
        {
            "en": ["{The} works for {v}.", "Since 2015, {the} has led a team at {v}."],
            "fr": ["{The} travaille pour {v}.", "Depuis 2015, {the} dirige une équipe chez {v}."],
        },
        {
            "en": ["Who does {the} work for?", "Which organisation employs {the}?"],
            "fr": ["Pour qui travaille {the} ?", "Quelle organisation emploie {the} ?"],
        },
        {"en": ["Who leads a team at {v}?"], "fr": ["Qui dirige une équipe chez {v} ?"]},
    )
)
_attr(
    Attr(
        "award",
        "what",
        lambda rng, e: plain(f"the {syllable_name(rng)} Prize", f"le prix {syllable_name(rng)}"),
        {
            "en": ["{The} won {v} in {y}.", "In {y}, {the} received {v}."],
            "fr": ["{The} a reçu {v} en {y}.", "En {y}, {the} a remporté {v}."],
        },
        {
            "en": ["Which prize did {the} win?", "What award did {the} receive?"],
            "fr": ["Quel prix a reçu {the} ?", "Quelle récompense a remporté {the} ?"],
        },
        {"en": ["Who won {v}?"], "fr": ["Qui a reçu {v} ?"]},
    )
)
_attr(
    Attr(
        "books",
        "how_many",
        lambda rng, e: quantity(rng.randint(2, 31), "books", "livres"),
        {
            "en": ["{The} has written {v}.", "{The} is the author of {v}."],
            "fr": ["{The} a écrit {v}.", "{The} a publié {v}."],
        },
        {"en": ["How many books has {the} written?"], "fr": ["Combien de livres a écrit {the} ?"]},
        label={"en": "number of books", "fr": "nombre de livres"},
        additive=True,
    )
)
_attr(
    Attr(
        "quote",
        "who",
        _quote,
        {
            "en": ["{The} once wrote: {v}.", "{v} is a line by {the}."],
            "fr": ["{The} a écrit : {v}.", "{v} est une phrase de {the}."],
        },
        {"en": ["What did {the} write about it?"], "fr": ["Qu'a écrit {the} ?"]},
        {
            "en": ["Who wrote {v}?", "Who is the author of the line {v}?"],
            "fr": ["Qui a écrit {v} ?", "De qui est la phrase {v} ?"],
        },
    )
)
_attr(
    Attr(
        "lab_field",
        "what",
        lambda rng, e: paired(rng, _FIELDS),
        {
            "en": ["{The} studies {v}.", "{The} is a specialist in {v}."],
            "fr": ["{The} fait de la recherche en {v}.", "{The} est spécialiste en {v}."],
        },
        {
            "en": ["What field does {the} study?", "What is {the} a specialist in?"],
            "fr": ["Dans quel domaine {the} fait-{il} de la recherche ?", "En quoi {the} est-{il} spécialiste ?"],
        },
    )
)

# ---- organisations
_attr(
    Attr(
        "founded",
        "when",
        lambda rng, e: a_year(rng, 1890, 2021),
        {
            "en": ["{The} was founded in {v}.", "{The} has existed since {v}."],
            "fr": ["{The} a été fondée en {v}.", "{The} existe depuis {v}."],
        },
        {
            "en": ["When was {the} founded?", "In which year was {the} created?"],
            "fr": ["Quand {the} a-t-elle été fondée ?", "En quelle année a été créée {the} ?"],
        },
    )
)
_attr(
    Attr(
        "founder",
        "who",
        lambda rng, e: plain(person_name(rng)),
        {
            "en": ["{The} was founded by {v}.", "{v} started {the}."],
            "fr": ["{The} a été fondée par {v}.", "{v} a créé {the}."],
        },
        {
            "en": ["Who founded {the}?", "Who started {the}?"],
            "fr": ["Qui a fondé {the} ?", "Qui est le fondateur {of} ?"],
        },
        {"en": ["Which organisation did {v} found?"], "fr": ["Quelle organisation a été fondée par {v} ?"]},
    )
)
_attr(
    Attr(
        "hq",
        "where",
        lambda rng, e: place(rng),
        {
            "en": ["{The} is based in {v}.", "The headquarters {of} are in {v}."],
            "fr": ["{The} est basée à {v}.", "Le siège {of} est à {v}."],
        },
        {
            "en": ["Where is {the} based?", "Where are the headquarters {of}?"],
            "fr": ["Où est basée {the} ?", "Où se trouve le siège {of} ?"],
        },
    )
)
_attr(
    Attr(
        "employees",
        "how_many",
        _num(12, 48000, "employees", "salariés"),
        {"en": ["{The} employs {v}.", "{The} has {v}."], "fr": ["{The} emploie {v}.", "{The} compte {v}."]},
        {
            "en": ["How many employees does {the} have?", "How many people work at {the}?"],
            "fr": ["Combien de salariés compte {the} ?", "Combien de personnes travaillent chez {the} ?"],
        },
        label={"en": "number of employees", "fr": "effectif"},
        additive=True,
    )
)
_attr(
    Attr(
        "revenue",
        "how_many",
        lambda rng, e: Value(
            {
                "en": f"{fmt_number(r := round(rng.uniform(1.2, 940), 1), 'en')} million euros",
                "fr": f"{fmt_number(r, 'fr')} millions d'euros",
            },
            r,
            {"en": "million euros", "fr": "millions d'euros"},
        ),
        {
            "en": ["{The} had a revenue of {v} last year.", "Last year, {the} earned {v}."],
            "fr": ["{The} a réalisé un chiffre d'affaires de {v} l'an dernier.", "L'an dernier, {the} a gagné {v}."],
        },
        {
            "en": ["What was the revenue {of} last year?", "How much did {the} earn last year?"],
            "fr": ["Quel a été le chiffre d'affaires {of} l'an dernier ?"],
        },
        label={"en": "revenue", "fr": "chiffre d'affaires"},
        additive=True,
    )
)
_attr(
    Attr(
        "org_field",
        "what",
        lambda rng, e: paired(rng, _FIELDS),
        {
            "en": ["{The} works in {v}.", "{The} funds research in {v}."],
            "fr": ["{The} est active en {v}.", "{The} finance la recherche en {v}."],
        },
        {
            "en": ["What field does {the} work in?", "What research does {the} fund?"],
            "fr": ["Dans quel domaine est active {the} ?", "Quelle recherche finance {the} ?"],
        },
    )
)
_attr(
    Attr(
        "subsidiaries",
        "how_many",
        lambda rng, e: quantity(rng.randint(2, 40), "subsidiaries", "filiales"),
        {"en": ["{The} owns {v}."], "fr": ["{The} possède {v}."]},
        {"en": ["How many subsidiaries does {the} own?"], "fr": ["Combien de filiales possède {the} ?"]},
    )
)

# ---- places
_attr(
    Attr(
        "country",
        "where",
        lambda rng, e: paired(rng, _COUNTRIES_IN),
        {
            "en": ["{The} is a town {v}.", "{The} lies {v}."],
            "fr": ["{The} est une ville située {v}.", "{The} se trouve {v}."],
        },
        {
            "en": ["In which country is {the}?", "Where is {the}?"],
            "fr": ["Dans quel pays se trouve {the} ?", "Où est {the} ?"],
        },
    )
)
_attr(
    Attr(
        "population",
        "how_many",
        _num(800, 950000, "inhabitants", "habitants", 10),
        {
            "en": ["{The} has {v}.", "About {v} live in {the}."],
            "fr": ["{The} compte {v}.", "Environ {v} vivent à {the}."],
        },
        {
            "en": ["How many people live in {the}?", "What is the population {of}?"],
            "fr": ["Combien d'habitants compte {the} ?", "Quelle est la population {of} ?"],
        },
        label={"en": "population", "fr": "population"},
        fem_label=True,
        additive=True,
    )
)
_attr(
    Attr(
        "altitude",
        "how_many",
        _num(20, 3900, "metres", "mètres"),
        {
            "en": ["{The} sits at an altitude of {v}.", "{The} is {v} above sea level."],
            "fr": ["{The} est située à {v} d'altitude.", "{The} se trouve à {v} au-dessus de la mer."],
        },
        {
            "en": ["At what altitude is {the}?", "How high above sea level is {the}?"],
            "fr": ["À quelle altitude se trouve {the} ?", "Quelle est l'altitude {of} ?"],
        },
        label={"en": "altitude", "fr": "altitude"},
        fem_label=True,
    )
)
_attr(
    Attr(
        "river",
        "what",
        lambda rng, e: plain(f"the {syllable_name(rng)} river", f"la rivière {syllable_name(rng)}"),
        {
            "en": ["{The} stands on {v}.", "{v} flows through {the}."],
            "fr": ["{The} est traversée par {v}.", "{v} coule à {the}."],
        },
        {"en": ["Which river flows through {the}?"], "fr": ["Quelle rivière traverse {the} ?"]},
    )
)
_attr(
    Attr(
        "settled",
        "when",
        lambda rng, e: a_year(rng, 1100, 1900),
        {"en": ["{The} was first settled in {v}."], "fr": ["{The} a été fondée en {v}."]},
        {"en": ["When was {the} first settled?"], "fr": ["Quand {the} a-t-elle été fondée ?"]},
    )
)
_attr(
    Attr(
        "mayor",
        "who",
        lambda rng, e: plain(person_name(rng)),
        {
            "en": ["The mayor {of} is {v}.", "{v} has been mayor {of} since 2019."],
            "fr": ["Le maire {of} est {v}.", "{v} est maire {of} depuis 2019."],
        },
        {"en": ["Who is the mayor {of}?"], "fr": ["Qui est maire {of} ?", "Qui dirige la mairie {of} ?"]},
        {"en": ["Which town has {v} as mayor?"], "fr": ["Quelle ville a pour maire {v} ?"]},
    )
)
_attr(
    Attr(
        "festival_month",
        "when",
        lambda rng, e: paired(rng, _MONTHS),
        {
            "en": ["Every year in {v}, {the} holds a lantern parade."],
            "fr": ["Chaque année en {v}, {the} organise un défilé de lanternes."],
        },
        {
            "en": ["In which month does {the} hold its lantern parade?"],
            "fr": ["En quel mois {the} organise-t-elle son défilé de lanternes ?"],
        },
    )
)
_attr(
    Attr(
        "twin",
        "what",
        lambda rng, e: plain(town_name(rng)),
        {"en": ["{The} is twinned with {v}."], "fr": ["{The} est jumelée avec {v}."]},
        {"en": ["Which town is {the} twinned with?"], "fr": ["Avec quelle ville {the} est-elle jumelée ?"]},
    )
)

# ---- methods (technical concepts)
_attr(
    Attr(
        "acronym_of",
        "define",
        lambda rng, e: e.facts["acronym_of"],
        {
            "en": [
                "{name} stands for {v}.",
                "{The} ({v}) was designed for long documents.",
                "The acronym {name} means {v}.",
            ],
            "fr": [
                "{name} signifie {v}.",
                "{The} ({v}) a été conçu{e} pour les longs documents.",
                "L'acronyme {name} veut dire {v}.",
            ],
        },
        {
            "en": ["What does {name} stand for?", "What does the acronym {name} mean?"],
            "fr": ["Que signifie {name} ?", "Que veut dire l'acronyme {name} ?", "Que signifie l'acronyme {name} ?"],
        },
    )
)
_attr(
    Attr(
        "layers",
        "how_many",
        lambda rng, e: quantity(rng.choice((4, 6, 8, 12, 16, 24, 32, 40, 48, 64, 96)), "layers", "couches"),
        {"en": ["{The} has {v}.", "{The} stacks {v}."], "fr": ["{The} compte {v}.", "{The} empile {v}."]},
        {
            "en": ["How many layers does {the} have?"],
            "fr": ["Combien de couches compte {the} ?", "Combien de couches a {the} ?"],
        },
        label={"en": "number of layers", "fr": "nombre de couches"},
    )
)
_attr(
    Attr(
        "parameters",
        "how_many",
        _parameters,
        {
            "en": ["{The} has about {v}.", "With {v}, {the} fits on one graphics card."],
            "fr": ["{The} compte environ {v}.", "Avec {v}, {the} tient sur une seule carte graphique."],
        },
        {
            "en": ["How many parameters does {the} have?"],
            "fr": ["Combien de paramètres compte {the} ?", "Combien de paramètres a {the} ?"],
        },
    )
)
_attr(
    Attr(
        "introduced",
        "when",
        lambda rng, e: a_year(rng, 1995, 2024),
        {
            "en": ["{The} was introduced in {v}.", "{The} first appeared in {v}."],
            "fr": ["{The} a été présenté{e} en {v}.", "{The} est apparu{e} en {v}."],
        },
        {
            "en": ["When was {the} introduced?", "In which year did {the} appear?"],
            "fr": ["Quand {the} a-t-{il} été présenté{e} ?", "En quelle année est apparu{e} {the} ?"],
        },
    )
)
_attr(
    Attr(
        "introduced_by",
        "who",
        lambda rng, e: plain(org_name(rng, e.home_lang)),
        {
            "en": ["{The} was proposed by researchers at {v}.", "{v} published {the}."],
            "fr": ["{The} a été proposé{e} par des chercheurs de {v}.", "{v} a publié {the}."],
        },
        {
            "en": ["Who proposed {the}?", "Which lab published {the}?"],
            "fr": ["Qui a proposé {the} ?", "Quel laboratoire a publié {the} ?"],
        },
    )
)
_attr(
    Attr(
        "gain",
        "how_many",
        lambda rng, e: plain(f"{rng.randint(3, 72)}%", f"{rng.randint(3, 72)} %"),
        {
            "en": ["{The} cuts memory use by {v}.", "Compared with a plain network, {the} uses {v} less memory."],
            "fr": [
                "{The} réduit la mémoire utilisée de {v}.",
                "Par rapport à un réseau classique, {the} utilise {v} de mémoire en moins.",
            ],
        },
        {
            "en": ["By how much does {the} cut memory use?", "How much less memory does {the} use?"],
            "fr": [
                "De combien {the} réduit-{il} la mémoire utilisée ?",
                "Quel pourcentage de mémoire économise {the} ?",
            ],
        },
        {
            "en": ["Which {noun} cuts memory use by {v}?"],
            "fr": ["Quelle technique réduit la mémoire utilisée de {v} ?"],
        },
    )
)
_attr(
    Attr(
        "task",
        "what",
        lambda rng, e: paired(rng, _TASKS),
        {
            "en": ["{The} is mainly used for {v}.", "Teams use {the} for {v}."],
            "fr": ["{The} sert surtout à {v}.", "On utilise {the} pour {v}."],
        },
        {
            "en": ["What is {the} used for?", "What task is {the} designed for?"],
            "fr": ["À quoi sert {the} ?", "Pour quelle tâche utilise-t-on {the} ?"],
        },
        {"en": ["Which {noun} is used for {v}?"], "fr": ["Quelle technique sert à {v} ?"]},
    )
)
_attr(
    Attr(
        "context",
        "how_many",
        lambda rng, e: quantity(rng.choice((512, 1024, 2048, 4096, 8192, 16384, 32768)), "tokens", "tokens"),
        {
            "en": ["{The} reads up to {v} at once.", "The context window {of} is {v}."],
            "fr": ["{The} lit jusqu'à {v} à la fois.", "La fenêtre de contexte {of} est de {v}."],
        },
        {
            "en": ["How long is the context window {of}?", "How many tokens can {the} read at once?"],
            "fr": ["Quelle est la longueur de contexte {of} ?", "Combien de tokens {the} peut-{il} lire à la fois ?"],
        },
    )
)
_attr(
    Attr(
        "components",
        "list",
        _components,
        {
            "en": ["{The} has three parts: {v}.", "{The} combines {v}."],
            "fr": ["{The} comporte trois éléments : {v}.", "{The} combine {v}."],
        },
        {
            "en": ["What are the parts {of}?", "What does {the} combine?"],
            "fr": ["Quels sont les éléments {of} ?", "Que combine {the} ?"],
        },
    )
)

# ---- events
_attr(
    Attr(
        "held_in",
        "where",
        lambda rng, e: place(rng),
        {
            "en": ["{The} takes place in {v}.", "{The} is held every year in {v}."],
            "fr": ["{The} a lieu à {v}.", "{The} se tient chaque année à {v}."],
        },
        {
            "en": ["Where does {the} take place?", "Where is {the} held?"],
            "fr": ["Où a lieu {the} ?", "Où se tient {the} ?"],
        },
    )
)
_attr(
    Attr(
        "month",
        "when",
        lambda rng, e: paired(rng, _MONTHS),
        {
            "en": ["{The} is held in {v}.", "{The} opens each {v}."],
            "fr": ["{The} se déroule en {v}.", "{The} ouvre chaque année en {v}."],
        },
        {
            "en": ["When is {the} held?", "In which month does {the} open?"],
            "fr": ["Quand se déroule {the} ?", "En quel mois ouvre {the} ?"],
        },
    )
)
_attr(
    Attr(
        "since",
        "when",
        lambda rng, e: a_year(rng, 1950, 2020),
        {
            "en": ["{The} has been held since {v}.", "{The} started in {v}."],
            "fr": ["{The} existe depuis {v}.", "{The} a commencé en {v}."],
        },
        {
            "en": ["Since when has {the} been held?", "When did {the} start?"],
            "fr": ["Depuis quand existe {the} ?", "Quand {the} a-t-{il} commencé ?"],
        },
    )
)
_attr(
    Attr(
        "visitors",
        "how_many",
        _num(300, 250000, "visitors", "visiteurs", 50),
        {
            "en": ["{The} welcomed {v} last year.", "Last year {v} came to {the}."],
            "fr": ["{The} a accueilli {v} l'an dernier.", "L'an dernier, {v} sont venus à {the}."],
        },
        {
            "en": ["How many visitors came to {the} last year?", "How many people attended {the} last year?"],
            "fr": [
                "Combien de visiteurs {the} a-t-{il} accueillis l'an dernier ?",
                "Combien de personnes sont venues à {the} l'an dernier ?",
            ],
        },
        label={"en": "attendance", "fr": "fréquentation"},
        fem_label=True,
        additive=True,
    )
)
_attr(
    Attr(
        "organiser",
        "who",
        _other_name(new_org),
        {"en": ["{The} is organised by {v}."], "fr": ["{The} est organisé{e} par {v}."]},
        {"en": ["Who organises {the}?"], "fr": ["Qui organise {the} ?"]},
        {"en": ["Which event is organised by {v}?"], "fr": ["Quel événement est organisé par {v} ?"]},
    )
)
_attr(
    Attr(
        "edition_count",
        "how_many",
        lambda rng, e: quantity(rng.randint(3, 70), "editions", "éditions"),
        {"en": ["{The} has had {v} so far."], "fr": ["{The} a connu {v} jusqu'ici."]},
        {"en": ["How many editions has {the} had?"], "fr": ["Combien d'éditions a connu {the} ?"]},
    )
)

# Sentences that state nothing one could be asked about: documents are not only facts.
FILLER = {
    "en": [
        "Reviewers praised its quiet design.",
        "The project drew wide attention at the time.",
        "Several newspapers covered the story.",
        "Its history is told in a small local museum.",
        "Critics were divided at first.",
        "The details are listed in the annual report.",
        "A second edition of the guide is planned.",
        "Many visitors come back every year.",
        "The team published its notes online.",
        "The first version had several flaws.",
    ],
    "fr": [
        "Les critiques ont salué sa conception discrète.",
        "Le projet a beaucoup fait parler de lui à l'époque.",
        "Plusieurs journaux en ont parlé.",
        "Son histoire est racontée dans un petit musée local.",
        "Les avis étaient partagés au début.",
        "Les détails figurent dans le rapport annuel.",
        "Une deuxième édition du guide est prévue.",
        "Beaucoup de visiteurs reviennent chaque année.",
        "L'équipe a publié ses notes en ligne.",
        "La première version avait plusieurs défauts.",
    ],
}

INTRO = {
    "product": {
        "en": ["{The} is {un} {noun}.", "{The} is a {noun} sold in small shops."],
        "fr": ["{The} est un produit récent.", "{The} est vendu{e} dans de petites boutiques."],
    },
    "person": {"en": ["{The} is well known in {his} field."], "fr": ["{The} est une figure connue de son domaine."]},
    "org": {"en": ["{The} is an independent organisation."], "fr": ["{The} est une organisation indépendante."]},
    "place": {"en": ["{The} is a quiet town."], "fr": ["{The} est une petite ville tranquille."]},
    "method": {
        "en": ["{The} is {un} {noun} for neural networks."],
        "fr": ["{The} est {un} {noun} de réseaux de neurones."],
    },
    "event": {"en": ["{The} is a yearly event."], "fr": ["{The} est un rendez-vous annuel."]},
}


def keys_of(e: Entity) -> list[str]:
    return [k for k in e.facts["_keys"]("en").split() if k in ATTRS]


_FR_CONTRACT = [
    (re.compile(r"\bà le\b"), "au"),
    (re.compile(r"\bà les\b"), "aux"),
    (re.compile(r"\bde le\b"), "du"),
    (re.compile(r"\bde les\b"), "des"),
    (re.compile(r"\b([dD])e (?=[AEIOUÉÈYaeiouéèy])"), r"\1'"),
]


def fill(template: str, e: Entity, lang: Lang, value: str, year: int = 2020) -> str:
    text = template.format(v=value, y=year, **e.slots(lang))
    if lang == "fr":
        for pattern, repl in _FR_CONTRACT:
            text = pattern.sub(repl, text)
    return text[0].upper() + text[1:]
