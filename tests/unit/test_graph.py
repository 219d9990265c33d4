"""The graph layer's pure parts: names and keys, the model-free extractor, the traversal graph, fusion, LLM schema."""

from __future__ import annotations

import json
import time

import pytest

from inferag_protocol.rag import Hit
from services.rag.graph.fusion import rrf
from services.rag.graph.index import CollectionGraph, Fragment, Link, Mention
from services.rag.graph.keyphrase import extract_chunk
from services.rag.graph.llm import Extraction, schema, to_chunk_graph
from services.rag.graph.service import fragments_of
from services.rag.graph.text import entity_id, entity_key, guess_language
from services.rag.graph.types import ChunkGraph, EntityMention, RelationMention
from tests.chunk_texts import ROOT

# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("a", "b"),
    [("the Transformers", "Transformer"), ("Éléments", "elements"), ("LLMs", "LLM"), ("l'attention", "Attention"),
     ("Tessaly  Chamber-Orchestra", "tessaly chamber orchestra")],
)  # fmt: skip
def test_names_that_merge_share_a_key(a: str, b: str) -> None:
    assert entity_key(a, "fr") == entity_key(b, "fr") != ""
    assert entity_id(entity_key(a, "fr")) == entity_id(entity_key(b, "fr"))


def test_keys_keep_what_tells_entities_apart() -> None:
    assert entity_key("GPT-3") != entity_key("GPT-4")
    assert entity_key("Bus") == "bus"  # no stopword of another language eats it
    assert entity_key("the of and") == ""


def test_language_guess() -> None:
    assert guess_language(["les", "modèles", "de", "langage", "sont", "entraînés", "sur", "des", "textes"]) == "fr"
    assert guess_language(["the", "models", "are", "trained", "on", "large", "amounts", "of", "text"]) == "en"
    assert guess_language([]) == "en"


# ---------------------------------------------------------------------------------------------- keyphrases

TEXT = (
    "Oriane Valcourt is a violinist. In 2011 she joined the Tessaly Chamber Orchestra, which rehearses in Medrin. "
    "Heavy rain fell on the Institut de Recherche en Informatique in Paris."
)


def _names(graph: ChunkGraph) -> dict[str, str]:
    return {e.name: e.type for e in graph.entities}


def test_keyphrase_names_acronyms_and_connectors() -> None:
    found = _names(extract_chunk(TEXT))
    assert {"Oriane Valcourt", "Tessaly Chamber Orchestra", "Medrin", "Paris"} <= set(found)
    assert found["Institut de Recherche"] == "NAME"
    assert found["violinist"] == "CONCEPT"
    assert "Heavy" not in found and "In" not in found  # capitalised only because they open a sentence
    acronyms = _names(extract_chunk("Les GRU simplifient les LSTM. On compare GPT-3 et LoRA sur GSM8K."))
    assert {"GRU", "LSTM", "GPT-3", "LoRA", "GSM8K"} <= set(acronyms)


def test_keyphrase_relations_are_sentence_co_occurrences() -> None:
    graph = extract_chunk(TEXT)
    pairs = {frozenset((r.source, r.target)): r for r in graph.relations}
    orchestra = pairs[frozenset(("Tessaly Chamber Orchestra", "Medrin"))]
    assert orchestra.description.startswith("In 2011 she joined the Tessaly Chamber Orchestra")
    # different sentences: no relation (the traversal links them through their chunk instead)
    assert frozenset(("Oriane Valcourt", "Medrin")) not in pairs


def test_keyphrase_french_uses_french_stopwords() -> None:
    text = ("Le mécanisme de self-attention permet au Transformer de pondérer les tokens. "
            "Les réseaux de neurones récurrents traitent la séquence pas à pas.")  # fmt: skip
    graph = extract_chunk(text)
    assert graph.language == "fr"
    names = {e.name.casefold() for e in graph.entities}
    assert "self-attention" in names and "transformer" in names
    assert not names & {"le", "les", "de", "la", "pas"}


def test_keyphrase_extraction_is_fast() -> None:
    """Well over 200 chunks/s of one core's time on the French course (documents of ~700 characters, the size
    of a default chunk); bench/graph.py measures it against ingestion."""
    lines = (ROOT / "datasets" / "course" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    chunks = [json.loads(line)["text"] for line in lines] * 3
    started = time.process_time()
    for text in chunks:
        extract_chunk(text)
    rate = len(chunks) / (time.process_time() - started)
    assert rate >= 200, f"{rate:.0f} chunks/s of CPU"


# ---------------------------------------------------------------------------------------------- the traversal graph


def _fragment(doc: str, index: int, names: list[str], links: list[tuple[str, str]] = (), version: str = "v1"):
    mentions = [Mention(entity_key(n), n, "NAME") for n in names]
    return Fragment(doc, version, index, f"{doc}-{version}-{index}", mentions,
                    [Link(entity_key(a), entity_key(b), f"{a} and {b}") for a, b in links])


def _doc_a(version: str = "v1") -> list[Fragment]:
    return [_fragment("a", 0, ["Oriane Valcourt", "Tessaly Orchestra"], [("Oriane Valcourt", "Tessaly Orchestra")],
                      version)]


def _doc_b() -> list[Fragment]:
    return [_fragment("b", 0, ["Tessaly Orchestra", "Medrin", "Corvane Hall"], [("Tessaly Orchestra", "Medrin")])]


def test_replacing_a_document_keeps_shared_entities_and_drops_its_own() -> None:
    graph = CollectionGraph()
    graph.replace_document("a", _doc_a())
    graph.replace_document("b", _doc_b())
    assert graph.counts() == {"entities": 4, "relations": 2, "chunks": 2, "documents": 2}
    gone = graph.replace_document("a", [_fragment("a", 0, ["Ewan Blackwood"], version="v2")])
    assert gone == {"oriane valcourt"}  # the orchestra survives: document b still names it
    assert "tessaly orchestra" in graph and graph.info("tessaly orchestra").documents == 1
    assert not graph.g.has_edge("oriane valcourt", "tessaly orchestra")  # the removed relation is gone
    assert graph.g.has_edge("tessaly orchestra", "medrin")  # b's is not
    gone = graph.replace_document("b", [])
    assert gone == {"tessaly orchestra", "medrin", "corvane hall"}
    assert graph.counts() == {"entities": 1, "relations": 0, "chunks": 1, "documents": 1}


def test_a_relation_goes_with_its_document_even_when_both_entities_stay() -> None:
    graph = CollectionGraph()
    graph.replace_document("a", [_fragment("a", 0, ["Tessaly Orchestra", "Corvane Hall"],
                                           [("Tessaly Orchestra", "Corvane Hall")])])  # fmt: skip
    graph.replace_document("b", [_fragment("b", 0, ["Tessaly Orchestra", "Corvane Hall"])])  # no relation here
    assert graph.g.has_edge("tessaly orchestra", "corvane hall")
    assert graph.replace_document("a", []) == set()  # both entities stay: b names them
    assert not graph.g.has_edge("tessaly orchestra", "corvane hall")
    graph.replace_document("c", [_fragment("c", 0, ["Tessaly Orchestra", "Corvane Hall"],
                                           [("Tessaly Orchestra", "Corvane Hall")])] * 1)  # fmt: skip
    assert graph.g.edges["tessaly orchestra", "corvane hall"]["weight"] == 1.0


def test_counts_after_writes_match_a_graph_built_from_scratch() -> None:
    incremental = CollectionGraph()
    incremental.replace_document("a", _doc_a())
    incremental.replace_document("b", _doc_b())
    incremental.replace_document("a", _doc_a("v2"))
    incremental.replace_document("b", [])
    incremental.replace_document("b", _doc_b())
    scratch = CollectionGraph()
    for fragment in [*_doc_a("v2"), *_doc_b()]:
        scratch.add(fragment)
    assert incremental.counts() == scratch.counts()
    assert {k: incremental.g.degree(k) for k in incremental.g} == {k: scratch.g.degree(k) for k in scratch.g}
    assert incremental.node_link_json() == scratch.node_link_json()


def test_fragment_payload_round_trip() -> None:
    fragment = _doc_b()[0]
    assert Fragment.from_payload(json.loads(json.dumps(fragment.payload()))) == fragment


def test_walk_reaches_the_bridge_document_with_its_path() -> None:
    graph = CollectionGraph()
    graph.replace_document("a", _doc_a())
    graph.replace_document("b", _doc_b())
    graph.replace_document("c", [_fragment("c", 0, ["Pellucid Trio", "Harbour Hall"])])
    hits = graph.walk(graph.name_matches("Where does the orchestra of Oriane Valcourt rehearse?"), hops=2)
    assert [h.doc_id for h in hits] == ["a", "b"]  # c shares nothing with the query's entities
    bridge = hits[1].evidence
    assert {e.name: e.hop for e in bridge.entities}["Tessaly Orchestra"] == 1
    assert [(r.source_name, r.target_name) for r in bridge.relations][0] == ("Oriane Valcourt", "Tessaly Orchestra")
    assert graph.walk(graph.name_matches("Oriane Valcourt"), hops=0)[0].doc_id == "a"
    assert len(graph.walk(graph.name_matches("Oriane Valcourt"), hops=0)) == 1  # no hop: only her chunk


def test_hubs_weigh_less_than_specific_entities() -> None:
    graph = CollectionGraph()
    for i in range(10):
        graph.add(_fragment(f"d{i}", 0, ["Orchestra", *(["Medrin"] if i == 7 else [])]))
    hits = graph.walk(graph.name_matches("orchestra in Medrin"), hops=0)
    assert hits[0].doc_id == "d7" and hits[0].score > 2 * hits[1].score


def test_export_formats_hold_ids_names_and_relations() -> None:
    import networkx as nx

    graph = CollectionGraph()
    graph.replace_document("b", _doc_b())
    parsed = nx.parse_graphml(graph.graphml().decode())
    node = parsed.nodes[entity_id("medrin")]
    assert node["name"] == "Medrin" and node["chunks"] == 1
    data = json.loads(graph.node_link_json())
    assert {n["name"] for n in data["nodes"]} == {"Tessaly Orchestra", "Medrin", "Corvane Hall"}
    assert len(data["edges"]) == 1


def test_fragments_merge_names_by_key_and_keep_empty_chunks() -> None:
    graphs = [ChunkGraph([EntityMention("the Orchestra", "NAME"), EntityMention("Orchestras", "NAME"),
                          EntityMention("Medrin", "NAME")],
                         [RelationMention("the Orchestra", "Medrin", "plays in")]), ChunkGraph()]  # fmt: skip
    first, empty = fragments_of("d", "v1", graphs)
    assert [m.key for m in first.mentions] == ["orchestra", "medrin"]
    assert [(r.source, r.target) for r in first.links] == [("orchestra", "medrin")]
    assert empty.mentions == [] and empty.chunk_index == 1


# ---------------------------------------------------------------------------------------------- fusion


def _hit(i: str, **kw: object) -> Hit:
    return Hit(id=i, doc_id=i, chunk_index=0, text=i, start=0, end=1, collection="c", score=0.0, **kw)


def test_rrf_rewards_agreement_and_keeps_graph_evidence() -> None:
    from inferag_protocol.graph import GraphEvidence

    dense, sparse = [_hit("x"), _hit("y")], [_hit("y"), _hit("z")]
    graph = [_hit("w", graph=GraphEvidence()), _hit("y", graph=GraphEvidence())]
    fused = rrf([dense, sparse, graph], 4)
    assert [h.id for h in fused][:1] == ["y"] and fused[0].graph is not None
    assert [h.id for h in rrf([dense, sparse, []], 3)] == [h.id for h in rrf([dense, sparse], 3)]
    assert [h.id for h in rrf([dense, sparse], 3)] == ["y", "x", "z"]  # Qdrant's k=2: 1/2+1/3 > 1/2 > 1/3


# ---------------------------------------------------------------------------------------------- the LLM schema


def test_llm_schema_bounds_every_list_and_string() -> None:
    spec = schema(8, 6)
    entity = spec["properties"]["entities"]
    assert entity["maxItems"] == 8 and spec["properties"]["relations"]["maxItems"] == 6
    assert all("maxLength" in p or "enum" in p for p in entity["items"]["properties"].values())
    assert spec["additionalProperties"] is False


def test_llm_reply_to_graph_adds_missing_ends_and_drops_self_loops() -> None:
    reply = Extraction.model_validate({
        "entities": [{"name": "Marie Curie", "type": "PERSON", "description": "physicist"},
                     {"name": "marie curie", "type": "PERSON", "description": "again"}],
        "relations": [{"source": "Marie Curie", "target": "Sorbonne", "description": "taught at"},
                      {"source": "Marie Curie", "target": "Marie Curie", "description": "self"}],
    })  # fmt: skip
    graph = to_chunk_graph(reply)
    assert [(e.name, e.type) for e in graph.entities] == [("Marie Curie", "PERSON"), ("Sorbonne", "OTHER")]
    assert [(r.source, r.target, r.description) for r in graph.relations] == [("Marie Curie", "Sorbonne", "taught at")]
    with pytest.raises(ValueError):
        Extraction.model_validate({"entities": [{"name": "x", "type": "ALIEN", "description": ""}], "relations": []})
