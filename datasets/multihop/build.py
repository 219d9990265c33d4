# ruff: noqa: E501  (the hand-written documents are one line each)
"""Build the multihop set: two-document (bridge) questions over made-up facts, in BEIR layout.

Every question names someone or something of one document (a musician, a researcher, a novel, a
player) and asks about another entity that document mentions but the question does not (their
orchestra, institute, publisher, club): the answer is only in the second document, which shares
nothing with the question but that bridge entity. All facts, names and places are invented.

The hand-written documents and questions are below; generated directory entries of the same kinds
(seeded, see `distractors`) are added so that a question's words do not single out the answer's
document. Questions are split into `test` (reported) and `dev` (the one set graph retrieval's
parameters were looked at on).

    python datasets/multihop/build.py           # rewrite corpus.jsonl, queries.jsonl, qa.jsonl, qrels/
    python datasets/multihop/build.py --check   # exit 1 if the files are not what the script builds
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (doc_id, title, text)
DOCS: list[tuple[str, str, str]] = [
# ---------------------------------------------------------------- music: ensembles (bridges)
("ens-tessaly", "Tessaly Chamber Orchestra", "The Tessaly Chamber Orchestra was founded in 1962 by the conductor Ambrose Kettering. It gives about forty concerts a season and rehearses in the Corvane Hall, in the harbour town of Medrin. Its repertoire runs from Haydn to commissions by living composers."),
("ens-brennock", "Brennock Wind Ensemble", "The Brennock Wind Ensemble is an amateur band of thirty players. Hilde Marrow founded it in 1978, and it still rehearses on Thursday evenings in the river town of Olsk. Its summer concerts take place in the Lantern Theatre."),
("ens-quill", "Quill Street Quartet", "The Quill Street Quartet was formed in 1991 by the cellist Teodor Vask. The quartet is in residence at the Arbel Conservatory in Sarnhaven, where its members also teach chamber music."),
("ens-halvane", "Halvane Philharmonic", "Founded in 1921, the Halvane Philharmonic is one of the oldest orchestras of the coast. Its music director is Ines Okafor-Lind, and it performs in the Greyfield Auditorium in Portsallow."),
("ens-morrow", "Morrow Baroque Consort", "The harpsichordist Celia Dunmore created the Morrow Baroque Consort in 2003. The consort plays on period instruments and performs in the Evrin Chapel in the town of Kettlebridge."),
("ens-saltmarsh", "Saltmarsh Brass Band", "Coal miners founded the Saltmarsh Brass Band in 1889. The band rehearses in the Old Pump House in Daleworth and has won the county championship eleven times."),
("ens-vireo", "Vireo Youth Orchestra", "The Vireo Youth Orchestra takes musicians aged twelve to twenty-one. Its conductor is Pavel Strand, and it rehearses on Saturdays in the Weaver's Hall in Ostrany. It was founded in 1999."),
("ens-carrow", "Carrow Opera Chorus", "The Carrow Opera Chorus sings in every production of the Carrow Opera House in Belmere. Its chorus master is Yusuf Aldane, who auditions new singers each September."),
("ens-nightjar", "Nightjar Jazz Collective", "The saxophonist Dara Fenwick started the Nightjar Jazz Collective in 2010. The collective plays every Friday at the Copper Kettle club in Varrow and records its sets live."),
("ens-eastmoor", "Eastmoor Choral Society", "The Eastmoor Choral Society was founded in 1950 by Agnes Pellham. Its eighty singers perform twice a year in the Thornwick Minster, usually an oratorio at Easter and carols in December."),
# ---------------------------------------------------------------- music: ensembles (distractors)
("ens-lindqvist", "Lindqvist Symphony", "The Lindqvist Symphony was founded in 1955 by Oskar Bellamy. It plays in the Rosenholm Concert Hall in the town of Tarrowby and tours abroad every second year."),
("ens-pellucid", "Pellucid String Trio", "The Pellucid String Trio was formed in 2015 and rehearses at the Harbour Guild Hall in Medrin. The trio specialises in music written after 1950."),
("ens-gannet", "Gannet Bay Sinfonietta", "Roland Tice founded the Gannet Bay Sinfonietta in 1984. The orchestra of twenty-five players rehearses in the Seaview Pavilion in Olsk."),
("ens-copperleaf", "Copperleaf Folk Ensemble", "The Copperleaf Folk Ensemble was founded in 1996 in the market town of Hobbin. It plays traditional dance music at the Granary Stage every month."),
("ens-marlowe", "Marlowe Cathedral Choir", "The Marlowe Cathedral Choir sings the daily services of the cathedral of Belmere. Its choirmaster is Edith Saye, and its boys and girls are recruited from local schools."),
("ens-ardent", "Ardent Percussion Group", "Kenji Moravec founded the Ardent Percussion Group in 2008. The group rehearses in a converted warehouse in Sarnhaven and performs in schools across the region."),
# ---------------------------------------------------------------- music: musicians
("mus-valcourt", "Oriane Valcourt", "Oriane Valcourt was born in 1984 and studied the violin for eleven years. Since 2011 she has been first violin of the Tessaly Chamber Orchestra. She also records baroque sonatas for a small label."),
("mus-achterberg", "Gideon Achterberg", "Gideon Achterberg is a clarinettist and a primary school teacher. In 2005 he joined the Brennock Wind Ensemble, and he now arranges much of its repertoire."),
("mus-sandoval", "Mireille Sandoval", "Mireille Sandoval plays the viola. After ten years as a freelance musician she became a member of the Quill Street Quartet in 2012. She is known for her recordings of contemporary string music."),
("mus-wierzba", "Tomasz Wierzba", "The horn player Tomasz Wierzba grew up in a family of musicians. He has been principal horn of the Halvane Philharmonic since 2016 and teaches masterclasses in the summer."),
("mus-ferrante", "Lucia Ferrante", "Lucia Ferrante is a soprano who specialises in early music. She sings regularly with the Morrow Baroque Consort, and her recording of Monteverdi madrigals won a critics' prize."),
("mus-blackwood", "Ewan Blackwood", "Ewan Blackwood has played the cornet since the age of nine. He is the principal cornet of the Saltmarsh Brass Band and works as a mechanic during the week."),
("mus-ribeiro", "Ana Ribeiro-Holt", "The cellist Ana Ribeiro-Holt started in the Vireo Youth Orchestra when she was fourteen. She later studied in Vienna and now plays in string quartets across Europe."),
("mus-oyelaran", "Benedikt Oyelaran", "Benedikt Oyelaran is a tenor. He joined the Carrow Opera Chorus in 2014 and has sung small solo parts in several of its productions."),
("mus-meyer", "Rosalind Meyer", "Rosalind Meyer plays the double bass. She is a founding member of the Nightjar Jazz Collective and also writes film music."),
("mus-fenn", "Harold Fenn", "Harold Fenn, a retired engineer, has sung bass in the Eastmoor Choral Society for thirty years. He also keeps the choir's library of scores."),
("mus-ilic", "Sven Ilic", "Sven Ilic is a trumpet player with the Lindqvist Symphony. He composes fanfares for brass ensembles in his spare time."),
("mus-haddad", "Noor Haddad", "The flautist Noor Haddad plays in the Gannet Bay Sinfonietta. She has given more than fifty recitals with the pianist Owen Gray."),
("mus-ludvik", "Petra Ludvik", "Petra Ludvik is a percussionist in the Ardent Percussion Group. She builds some of her own instruments from recycled metal."),
("mus-whitcombe", "Jonas Whitcombe", "Jonas Whitcombe is the organist who accompanies the Marlowe Cathedral Choir. He studied at a conservatory abroad before returning home."),
# ---------------------------------------------------------------- research: institutes (bridges)
("lab-halvorsen", "Halvorsen Institute of Cryogenics", "The Halvorsen Institute of Cryogenics was founded in 1974. It stands in the town of Brevik-Ostra, on the shore of Lake Tunmere, and its director is Marit Solberg-Quay. The institute runs one of the coldest refrigerators in the country."),
("lab-caldera", "Caldera Materials Laboratory", "The Caldera Materials Laboratory studies alloys and ceramics for turbines. It was founded in 1988 in the city of Ferrowdale, and Anselm Dietz has directed it since 2010."),
("lab-pinecrest", "Pinecrest Marine Station", "The Pinecrest Marine Station was founded in 1931 on the island of Skarra. Its director, Leila Mbatha, has expanded its work on coastal ecosystems."),
("lab-orison", "Orison Centre for Language Technology", "The Orison Centre for Language Technology opened in 2006 in the town of Valmont-sur-Lys. Its director is Hugo Abernethy, and it builds speech recognisers for minority languages."),
("lab-tannery", "Tannery Row Robotics Lab", "The Tannery Row Robotics Lab belongs to the Wexbridge Polytechnic. It is headed by Priya Ramaswamy-Cole and builds robots for inspection work in tunnels."),
("lab-gleaming", "Gleaming Fen Observatory", "The Gleaming Fen Observatory was founded in 1910 near the village of Ousterley. Its director is Magnus Tervo, and its telescopes are open to the public on clear Friday nights."),
("lab-aldermoor", "Aldermoor Institute for Soil Science", "The Aldermoor Institute for Soil Science was founded in 1952 in Crayford Vale. Its director, Benoit Lacasse, leads its long-term studies of farmland erosion."),
("lab-kestrel", "Kestrel Vaccine Institute", "The Kestrel Vaccine Institute develops vaccines against tropical diseases. It is located in the city of Port Elspeth and is directed by Amara Nwosu-Hale."),
("lab-brightwater", "Brightwater Climate Unit", "The Brightwater Climate Unit was founded in 1999 in Lornesk. Its head is Elias Varga, and it runs models of glaciers and sea ice."),
("lab-meridian", "Meridian Institute of Mathematics", "The Meridian Institute of Mathematics was founded in 1967 in the town of Castelbrac. Its director is Sofia Andrada, and it hosts a famous summer school in number theory."),
# ---------------------------------------------------------------- research: institutes (distractors)
("lab-stonebridge", "Stonebridge Genome Centre", "The Stonebridge Genome Centre sequences plant and animal genomes. It was founded in 2002 in Lornesk and is directed by Karl Hesse."),
("lab-northglass", "Northglass Optics Lab", "The Northglass Optics Lab designs lenses for satellites. It was founded in 1979 in the city of Ferrowdale, and its director is Yara Benali."),
("lab-redshank", "Redshank Estuary Station", "The Redshank Estuary Station was founded in 1958 on Hollin Isle. Its director, Dmitri Osei, studies the birds of the estuary."),
("lab-wexbridge", "Wexbridge Centre for Energy Storage", "The Wexbridge Centre for Energy Storage is part of the Wexbridge Polytechnic. It is headed by Ilse Brandt and develops batteries for the electricity grid."),
("lab-fennick", "Fennick Institute of Neuroscience", "The Fennick Institute of Neuroscience was founded in 1985 in Port Elspeth. Its director is Oskar Lund, and it studies memory in the ageing brain."),
("lab-quarry", "Quarry Hill Seismology Lab", "The Quarry Hill Seismology Lab was founded in 1963 in the town of Mardale. Its director, Hana Kowal, runs a network of two hundred seismometers."),
# ---------------------------------------------------------------- research: researchers
("res-kristiansen", "Edda Kristiansen", "Edda Kristiansen is a physicist who studies superconducting wires. Since 2015 she has led a group at the Halvorsen Institute of Cryogenics, and she won a national prize for young scientists."),
("res-okonkwo", "Rafael Okonkwo-Smith", "Rafael Okonkwo-Smith is a chemist who works on heat-resistant coatings. He is a postdoctoral researcher at the Caldera Materials Laboratory."),
("res-halloway", "Ingrid Halloway", "The marine biologist Ingrid Halloway studies kelp forests and the animals that live in them. Her fieldwork is based at the Pinecrest Marine Station."),
("res-benhamou", "Tariq Benhamou", "Tariq Benhamou is a linguist. He leads the speech group of the Orison Centre for Language Technology and has recorded hundreds of hours of spoken dialects."),
("res-castellanos", "Mei-Ling Castellanos", "The engineer Mei-Ling Castellanos builds walking robots. She joined the Tannery Row Robotics Lab in 2018 after a degree in mechanics."),
("res-oduya", "Felix Oduya", "Felix Oduya is an astronomer. In 2009 he discovered a comet from the Gleaming Fen Observatory, and the comet now carries his name."),
("res-lindholm", "Greta Lindholm", "The soil scientist Greta Lindholm measures how much carbon fields can store. She works at the Aldermoor Institute for Soil Science."),
("res-ferreira", "Samuel Ferreira-Banks", "Samuel Ferreira-Banks is an immunologist who tests vaccines against dengue fever. His laboratory is part of the Kestrel Vaccine Institute."),
("res-virtanen", "Aino Virtanen", "The climatologist Aino Virtanen models the retreat of glaciers. She has worked at the Brightwater Climate Unit since 2012."),
("res-baptiste", "Lorenzo Baptiste", "Lorenzo Baptiste is a mathematician who works on prime numbers. He holds a chair at the Meridian Institute of Mathematics."),
("res-adeyemi", "Olu Adeyemi", "The geneticist Olu Adeyemi studies the genomes of wheat. He works at the Stonebridge Genome Centre."),
("res-mendes", "Clara Mendes", "Clara Mendes is a physicist who designs telescope lenses. She works at the Northglass Optics Lab."),
("res-pritchard", "Rhys Pritchard", "The ecologist Rhys Pritchard counts migrating birds every spring. He is based at the Redshank Estuary Station."),
("res-zhao", "Wen Zhao", "Wen Zhao is a neuroscientist who studies sleep and memory. She leads a team at the Fennick Institute of Neuroscience."),
# ---------------------------------------------------------------- books: publishers (bridges)
("pub-larkspur", "Larkspur Press", "Larkspur Press was founded in 1931 by Edwin Harrowgate. The publisher is based in the city of Calloway and is known for its literary fiction and its cloth bindings."),
("pub-blackthorn", "Blackthorn & Vine", "Blackthorn & Vine is one of the oldest publishing houses in the country. It was founded in 1874 in the town of Mirefield and publishes novels and travel writing."),
("pub-ninefold", "Ninefold Books", "Ninefold Books was founded in 2001 by Omar Shakir. The publisher, based in Estmere, prints about twenty new titles a year, mostly debut novels."),
("pub-paleharbour", "Pale Harbour Editions", "Pale Harbour Editions was founded in 1968 by the poet Yvonne Carraway. The house, based in Aubrelle, publishes poetry and short novels."),
("pub-gristmill", "Gristmill House", "Gristmill House was founded in 1952 by the printer Walter Beddoes in Tollan Cross. The publisher still prints some of its books on its own presses."),
("pub-cormorant", "Cormorant Publishing", "Cormorant Publishing was founded in 1990 in Kingsmoor. Since 2015 it has been led by Farah Idris, who added a list of translated fiction."),
("pub-amberline", "Amberline Books", "Amberline Books was founded in 1922 and is based in the town of Pellworth. It publishes historical novels and books about maps."),
("pub-fernhollow", "Fernhollow Press", "Fernhollow Press was founded in 1985 by Maeve Kinsella in Dunharrow. It is an independent publisher of fiction and essays."),
("pub-quayside", "Quayside Editions", "Quayside Editions is a publisher based in the port city of Ravensport. It was founded in 1979, and its publisher, Tobias Renn, looks for novels about the sea."),
("pub-starling", "Starling & Rowe", "Starling & Rowe was founded in 1903 in the city of Hollowmere by two booksellers. Today it publishes crime fiction and classic reprints."),
# ---------------------------------------------------------------- books: publishers (distractors)
("pub-thistledown", "Thistledown Books", "Thistledown Books was founded in 1960 by Nora Blake. The publisher is based in Calloway and publishes books for children."),
("pub-oakapple", "Oakapple Press", "Oakapple Press is a small publisher founded in 1994 in the town of Mirefield. It publishes local history and walking guides."),
("pub-wayfarer", "Wayfarer House", "Wayfarer House was founded in 1948 by Leonard Pike and is based in Estmere. It publishes travel writing and memoirs."),
("pub-lanternfish", "Lanternfish Books", "Lanternfish Books was founded in 2011 in Kingsmoor by Hana Sato. It publishes graphic novels and illustrated fiction."),
("pub-greyhen", "Greyhen Editions", "Greyhen Editions is a publisher in the port city of Ravensport, founded in 1972 by Ivor Glass. It publishes poetry and plays."),
("pub-foxglove", "Foxglove Publishing", "Foxglove Publishing was founded in 1936 in Pellworth by Ruth Calder. It is known for its cookery books."),
# ---------------------------------------------------------------- books: novels
("nov-saltorchard", "The Salt Orchard", "The Salt Orchard is a novel by Imogen Farrow, published in 1998 by Larkspur Press. It follows three generations of a family of apple growers near the sea."),
("nov-wintercrows", "A Winter for Crows", "A Winter for Crows is the first novel of Daniel Mbeki-Rhodes. Blackthorn & Vine published it in 2007, and it was adapted for radio two years later."),
("nov-glassrivers", "Glass Rivers", "Glass Rivers is a novel by Hamid Qureshi about a city flooded by a broken dam. It was published in 2013 by Ninefold Books and translated into nine languages."),
("nov-lighthouse", "The Lighthouse Ledger", "The Lighthouse Ledger is a short novel by Beatrix Polloway, told through the logbook of a lighthouse keeper. Pale Harbour Editions published it in 1984."),
("nov-ironbells", "Iron Bells", "Iron Bells is a novel by Kwame Asante-Park set in a foundry town. It was published by Gristmill House and won a prize for first novels."),
("nov-ostrany", "Letters from Ostrany", "Letters from Ostrany is an epistolary novel by Zofia Markowska. It was published in 2019 by Cormorant Publishing."),
("nov-cartographer", "The Cartographer's Daughter", "The Cartographer's Daughter is a historical novel by Leona Vasquez about a woman who maps an unknown coast. Its publisher is Amberline Books."),
("nov-mothseason", "Moth Season", "Moth Season is a novel by Callum Reid about a summer in a remote village. It was published in 2016 by Fernhollow Press."),
("nov-tidewall", "Under the Tidewall", "Under the Tidewall is a novel by Esperanza Ruiz about divers who repair a sea wall. It was published by Quayside Editions in 2010."),
("nov-ninelanterns", "Nine Lanterns", "Nine Lanterns is a detective novel by Hideo Marsh. Starling & Rowe published it in 1999 as the first of a series of five."),
("nov-hollowkite", "The Hollow Kite", "The Hollow Kite is a children's novel by Priscilla Dunn, published by Thistledown Books in 2004."),
("nov-ashclover", "Ash and Clover", "Ash and Clover is a novel by Martin Hale about two rival farms. It was published by Oakapple Press in 2001."),
("nov-paperwolves", "Paper Wolves", "Paper Wolves is a memoir-like novel by Ines Carvalho, published by Wayfarer House in 2018."),
("nov-deepamber", "Deep Amber", "Deep Amber is an illustrated novel by Theo Quint about a girl who finds a fossil. It was published by Lanternfish Books in 2020."),
# ---------------------------------------------------------------- football: clubs (bridges)
("club-rovenna", "FC Rovenna", "FC Rovenna was founded in 1908. The club plays its home matches at the Castellan Stadium, and its coach is Marco Tessitore, a former defender of the club."),
("club-ashgrove", "Ashgrove Athletic", "Ashgrove Athletic plays in the second division. Its home ground is Millpond Park, and its coach since 2021 has been Declan Forde."),
("club-velmar", "Sporting Velmar", "Sporting Velmar was founded in 1919 by dock workers. Its coach is Joana Prates, the first woman to coach a club of the first division, and it plays at the Estadio do Farol."),
("club-kilnhurst", "Kilnhurst United", "Kilnhurst United was founded in 1897 by the workers of a brick factory. The club still plays at a ground nicknamed the Brickworks."),
("club-tarsk", "Dynamo Tarsk", "Dynamo Tarsk is the most successful club of its region. Its home ground is the Riverside Arena, and its coach is Oleg Baranov."),
("club-corvalis", "Real Corvalis", "Real Corvalis was founded in 1921. It plays its home matches at the Estadio Aurelio Pons, named after its first president."),
("club-wyndham", "Borough of Wyndham FC", "Borough of Wyndham FC is a semi-professional club founded in 1923. It plays at Ferry Lane, and its manager is Sam Akintola."),
("club-sarrance", "Olympique Sarrance", "Olympique Sarrance plays at the Stade des Tilleuls. Its coach, Claire Mercadier, took the team to the national cup final in 2022."),
("club-fellside", "Fellside Rovers", "Fellside Rovers was founded in 1884, which makes it one of the oldest clubs in the league. It plays at Quarry Road."),
("club-unionblanca", "Union Blanca", "Union Blanca plays at the Estadio del Sol Naciente. Its coach is Ramiro Ledesma, and the club is famous for its youth academy."),
# ---------------------------------------------------------------- football: clubs (distractors)
("club-portsallow", "Portsallow Town", "Portsallow Town plays its home matches at Harbour Road. The club was founded in 1899, and its coach is Ivy Chen."),
("club-brennan", "Athletic Brennan", "Athletic Brennan was founded in 1930 and plays at the Ironside Ground. Its coach is Pieter de Wit."),
("club-mirefield", "Mirefield City", "Mirefield City plays at the Marsh Lane stadium. The club was founded in 1891, and its coach is Gareth Lowry."),
("club-lanza", "Deportivo Lanza", "Deportivo Lanza was founded in 1947. Its home ground is the Estadio Municipal de Lanza, and its coach is Rubén Salas."),
("club-stellan", "Stellan FC", "Stellan FC plays at the North Pier Stadium. Its coach is Henrik Aas, and the club was founded in 1912."),
("club-oskava", "Racing Oskava", "Racing Oskava was founded in 1926 and plays at the Stadion Lipa. Its coach is Tomas Hruby."),
# ---------------------------------------------------------------- football: players
("ply-mendonca", "Tiago Mendonça", "Tiago Mendonça is a striker known for his headers. He joined FC Rovenna in 2019 and was the top scorer of the league two seasons later."),
("ply-visser", "Bram Visser", "Bram Visser is a goalkeeper. After six seasons abroad he signed for Ashgrove Athletic in 2022."),
("ply-adjei", "Kofi Adjei-Larsen", "Kofi Adjei-Larsen is a midfielder with a famous left foot. He plays for Sporting Velmar and has been capped twenty times."),
("ply-orourke", "Liam O'Rourke", "Liam O'Rourke is a central defender. He has spent his whole career at Kilnhurst United, where he is now the captain."),
("ply-kovalenko", "Artem Kovalenko", "Artem Kovalenko is a fast winger. He moved to Dynamo Tarsk in 2020 for a record fee."),
("ply-sarmiento", "Emilio Sarmiento", "Emilio Sarmiento is a forward who came through the youth teams of Real Corvalis. He scored on his debut at seventeen."),
("ply-penhallow", "Jack Penhallow", "Jack Penhallow is a plumber by trade and a footballer at weekends. He captains Borough of Wyndham FC."),
("ply-boudiaf", "Yasmine Boudiaf", "Yasmine Boudiaf is a defender who plays for Olympique Sarrance. She was voted player of the season in 2023."),
("ply-tregarthen", "Owen Tregarthen", "Owen Tregarthen is a midfielder. He signed for Fellside Rovers from a local amateur side in 2017."),
("ply-paredes", "Lucía Paredes", "Lucía Paredes is a striker who plays for Union Blanca. She scored forty goals in her first three seasons."),
("ply-ekdahl", "Nils Ekdahl", "Nils Ekdahl is a goalkeeper who plays for Portsallow Town. He is famous for saving penalties."),
("ply-obi", "Marcus Obi", "Marcus Obi is a winger who plays for Mirefield City. He studies law in the evenings."),
("ply-fontana", "Dario Fontana", "Dario Fontana is a defender who plays for Deportivo Lanza. He has never been sent off."),
("ply-lindgren", "Hugo Lindgren", "Hugo Lindgren is a striker who plays for Stellan FC. He started his career as a futsal player."),
]

# (id, question, answers, bridge entity, document naming the subject, document holding the answer, split)
QUESTIONS: list[tuple[str, str, list[str], str, str, str, str]] = [
("mh01", "In which town does the orchestra of violinist Oriane Valcourt rehearse?", ["Medrin"], "Tessaly Chamber Orchestra", "mus-valcourt", "ens-tessaly", "test"),
("mh02", "Who founded the ensemble that clarinettist Gideon Achterberg joined in 2005?", ["Hilde Marrow"], "Brennock Wind Ensemble", "mus-achterberg", "ens-brennock", "test"),
("mh03", "In which town is the quartet of viola player Mireille Sandoval based?", ["Sarnhaven"], "Quill Street Quartet", "mus-sandoval", "ens-quill", "test"),
("mh04", "Who is the music director of the orchestra in which Tomasz Wierzba plays principal horn?", ["Ines Okafor-Lind"], "Halvane Philharmonic", "mus-wierzba", "ens-halvane", "test"),
("mh05", "In which town does the consort of soprano Lucia Ferrante perform?", ["Kettlebridge"], "Morrow Baroque Consort", "mus-ferrante", "ens-morrow", "test"),
("mh06", "In what year was the brass band of cornet player Ewan Blackwood founded?", ["1889"], "Saltmarsh Brass Band", "mus-blackwood", "ens-saltmarsh", "test"),
("mh07", "Who conducts the youth orchestra in which cellist Ana Ribeiro-Holt started?", ["Pavel Strand"], "Vireo Youth Orchestra", "mus-ribeiro", "ens-vireo", "test"),
("mh08", "Who leads the chorus that tenor Benedikt Oyelaran sings in?", ["Yusuf Aldane"], "Carrow Opera Chorus", "mus-oyelaran", "ens-carrow", "dev"),
("mh09", "At which club does the jazz collective of bassist Rosalind Meyer play?", ["Copper Kettle"], "Nightjar Jazz Collective", "mus-meyer", "ens-nightjar", "dev"),
("mh10", "In which building does the choir of bass singer Harold Fenn perform?", ["Thornwick Minster"], "Eastmoor Choral Society", "mus-fenn", "ens-eastmoor", "dev"),
("mh11", "In which town is the institute where the physicist Edda Kristiansen leads a group?", ["Brevik-Ostra"], "Halvorsen Institute of Cryogenics", "res-kristiansen", "lab-halvorsen", "test"),
("mh12", "Who directs the laboratory where the chemist Rafael Okonkwo-Smith is a postdoctoral researcher?", ["Anselm Dietz"], "Caldera Materials Laboratory", "res-okonkwo", "lab-caldera", "test"),
("mh13", "Where is the station where the marine biologist Ingrid Halloway does her fieldwork?", ["Skarra"], "Pinecrest Marine Station", "res-halloway", "lab-pinecrest", "test"),
("mh14", "In which town is the centre where the linguist Tariq Benhamou leads the speech group?", ["Valmont-sur-Lys"], "Orison Centre for Language Technology", "res-benhamou", "lab-orison", "test"),
("mh15", "Who heads the lab where engineer Mei-Ling Castellanos builds walking robots?", ["Priya Ramaswamy-Cole"], "Tannery Row Robotics Lab", "res-castellanos", "lab-tannery", "test"),
("mh16", "When was the observatory founded from which astronomer Felix Oduya discovered his comet?", ["1910"], "Gleaming Fen Observatory", "res-oduya", "lab-gleaming", "test"),
("mh17", "Who is the director of the institute where soil scientist Greta Lindholm works?", ["Benoit Lacasse"], "Aldermoor Institute for Soil Science", "res-lindholm", "lab-aldermoor", "test"),
("mh18", "In which city is the institute of the immunologist Samuel Ferreira-Banks?", ["Port Elspeth"], "Kestrel Vaccine Institute", "res-ferreira", "lab-kestrel", "dev"),
("mh19", "Who heads the unit where the climatologist Aino Virtanen works?", ["Elias Varga"], "Brightwater Climate Unit", "res-virtanen", "lab-brightwater", "dev"),
("mh20", "In which town is the institute where mathematician Lorenzo Baptiste holds a chair?", ["Castelbrac"], "Meridian Institute of Mathematics", "res-baptiste", "lab-meridian", "test"),
("mh21", "In which city is the publisher of the novel The Salt Orchard based?", ["Calloway"], "Larkspur Press", "nov-saltorchard", "pub-larkspur", "test"),
("mh22", "In which town was the publisher of A Winter for Crows founded?", ["Mirefield"], "Blackthorn & Vine", "nov-wintercrows", "pub-blackthorn", "test"),
("mh23", "Who founded the publisher of the novel Glass Rivers?", ["Omar Shakir"], "Ninefold Books", "nov-glassrivers", "pub-ninefold", "test"),
("mh24", "Who founded the publishing house of The Lighthouse Ledger?", ["Yvonne Carraway"], "Pale Harbour Editions", "nov-lighthouse", "pub-paleharbour", "test"),
("mh25", "In what year was the publisher of Iron Bells founded?", ["1952"], "Gristmill House", "nov-ironbells", "pub-gristmill", "test"),
("mh26", "Who leads the publisher of Letters from Ostrany?", ["Farah Idris"], "Cormorant Publishing", "nov-ostrany", "pub-cormorant", "test"),
("mh27", "In which town is the publisher of The Cartographer's Daughter based?", ["Pellworth"], "Amberline Books", "nov-cartographer", "pub-amberline", "test"),
("mh28", "Who founded the press that published Moth Season?", ["Maeve Kinsella"], "Fernhollow Press", "nov-mothseason", "pub-fernhollow", "dev"),
("mh29", "In which city is the publisher of Under the Tidewall based?", ["Ravensport"], "Quayside Editions", "nov-tidewall", "pub-quayside", "test"),
("mh30", "In which city was the publisher of Nine Lanterns founded?", ["Hollowmere"], "Starling & Rowe", "nov-ninelanterns", "pub-starling", "dev"),
("mh31", "At which stadium does striker Tiago Mendonça play his home matches?", ["Castellan Stadium"], "FC Rovenna", "ply-mendonca", "club-rovenna", "test"),
("mh32", "Who coaches the club of goalkeeper Bram Visser?", ["Declan Forde"], "Ashgrove Athletic", "ply-visser", "club-ashgrove", "test"),
("mh33", "Who is the coach of the club of midfielder Kofi Adjei-Larsen?", ["Joana Prates"], "Sporting Velmar", "ply-adjei", "club-velmar", "test"),
("mh34", "When was the club of defender Liam O'Rourke founded?", ["1897"], "Kilnhurst United", "ply-orourke", "club-kilnhurst", "test"),
("mh35", "What is the home ground of the club of winger Artem Kovalenko?", ["Riverside Arena"], "Dynamo Tarsk", "ply-kovalenko", "club-tarsk", "test"),
("mh36", "In which stadium does forward Emilio Sarmiento play his home matches?", ["Estadio Aurelio Pons"], "Real Corvalis", "ply-sarmiento", "club-corvalis", "test"),
("mh37", "Who manages the club captained by Jack Penhallow?", ["Sam Akintola"], "Borough of Wyndham FC", "ply-penhallow", "club-wyndham", "test"),
("mh38", "Who coaches the team of defender Yasmine Boudiaf?", ["Claire Mercadier"], "Olympique Sarrance", "ply-boudiaf", "club-sarrance", "dev"),
("mh39", "In which year was the club of midfielder Owen Tregarthen founded?", ["1884"], "Fellside Rovers", "ply-tregarthen", "club-fellside", "dev"),
("mh40", "Who is the coach of the club of striker Lucía Paredes?", ["Ramiro Ledesma"], "Union Blanca", "ply-paredes", "club-unionblanca", "dev"),
("mh41", "Who founded the orchestra in which Oriane Valcourt is first violin?", ["Ambrose Kettering"], "Tessaly Chamber Orchestra", "mus-valcourt", "ens-tessaly", "test"),
("mh42", "In what year was the youth orchestra of cellist Ana Ribeiro-Holt founded?", ["1999"], "Vireo Youth Orchestra", "mus-ribeiro", "ens-vireo", "test"),
("mh43", "When was the station where Ingrid Halloway studies kelp founded?", ["1931"], "Pinecrest Marine Station", "res-halloway", "lab-pinecrest", "test"),
("mh44", "In which year was the publisher of The Salt Orchard founded?", ["1931"], "Larkspur Press", "nov-saltorchard", "pub-larkspur", "test"),
]


# ---------------------------------------------------------------------------------------------- distractors
# Directory entries of the same four kinds, made from templates with a seeded generator: with only the
# hand-written documents, a question's own words ("orchestra", "rehearses", "town") nearly single out
# the bridge document in a corpus this small; in a real collection they match many documents.

FIRST = ["Adele", "Bruno", "Cosima", "Dmitri", "Elin", "Fabian", "Greer", "Hamza", "Ilona", "Jasper", "Kaia", "Lorcan", "Maren", "Nikolai", "Odile", "Piet", "Quentin", "Rhea", "Soren", "Thea", "Ulrich", "Vesna", "Wilmer", "Xenia", "Yorick", "Zelda", "Anouk", "Basil", "Corin", "Delphine", "Emrys", "Freya", "Gunnar", "Hester", "Ivo", "Juno", "Kasimir", "Linnea", "Matthias", "Nadia", "Osric", "Perpetua", "Ragnar", "Saskia", "Tobiah", "Ursula", "Viggo", "Wren", "Ysolde", "Zoltan"]
LAST = ["Abernathy", "Bellweather", "Corrigan", "Dunleavy", "Eskildsen", "Farnaby", "Gorecki", "Hollister", "Ingleby", "Jarrow", "Kowalczyk", "Lindqvist-Moor", "Marchetti", "Nørgaard", "Oakeshott", "Pemberton", "Quarles", "Rasmussen", "Sauveterre", "Thackeray", "Underhill", "Vantongeren", "Whitlock", "Ximenes", "Yelland", "Zabaleta", "Ashdown", "Brightman", "Castellane", "Draycott", "Elsworth", "Fairbairn", "Gallagher-Rye", "Holroyd", "Iredale", "Jessop", "Kilbride", "Lockwood", "Merriweather", "Northcott"]
STEMS = ["Ambry", "Bracken", "Cinder", "Dovecote", "Ember", "Fallow", "Gorse", "Heron", "Ivywood", "Juniper", "Kingfisher", "Linden", "Marram", "Nettle", "Orchid", "Pebble", "Quarrel", "Rowan", "Sorrel", "Thimble", "Umber", "Verity", "Willow", "Yarrow", "Alder", "Bramble", "Cobalt", "Damson", "Elder", "Flint", "Garnet", "Hazel", "Iris", "Jasmine", "Kelp", "Lichen", "Moss", "Nutmeg", "Opal", "Plover", "Quince", "Russet", "Sedge", "Teasel", "Vetch", "Wicker", "Birch", "Clover"]
PLACE = ["Ashcombe", "Barrowmere", "Cressing", "Dunmoor", "Elvaston", "Foxley", "Glenhaven", "Holmsby", "Ingleford", "Jarvik", "Kelderby", "Larchmont", "Morwick", "Netherby", "Oxhaven", "Pollard", "Quenby", "Redmarsh", "Saltcote", "Thornaby", "Upwick", "Vellan", "Wolstead", "Yarnfield", "Ambleside-on-Tyr", "Brackwater", "Coldharbour", "Drummond", "Falstone", "Greyholt", "Hexley", "Kirkwell", "Lowmoor", "Mossford", "Northam", "Ormsby", "Pellinor", "Rothwick", "Skelby", "Tarnside"]

ENSEMBLE_KINDS = ("Chamber Orchestra", "Symphony Orchestra", "Wind Ensemble", "String Quartet", "Brass Band",
                  "Youth Orchestra", "Baroque Consort", "Choral Society", "Jazz Collective", "Opera Chorus",
                  "Sinfonietta", "Philharmonic")
ENSEMBLE_TEMPLATES = (
    "The {name} was founded in {year} by the conductor {founder}. It rehearses in the {hall}, in the town of "
    "{town}, and its music director is {leader}.",
    "{founder} founded the {name} in {year}. The ensemble rehearses every week in the {hall} in {town}; "
    "{leader} has conducted it since {year2}.",
    "Based in the town of {town}, the {name} was founded in {year}. It performs in the {hall}, and its "
    "conductor is {leader}, who took over from the founder, {founder}.",
)
HALL_KINDS = ("Hall", "Auditorium", "Concert Hall", "Chapel", "Assembly Rooms", "Music House")
LAB_KINDS = ("Institute of Physics", "Materials Laboratory", "Marine Station", "Centre for Language Technology",
             "Robotics Lab", "Observatory", "Institute for Soil Science", "Vaccine Institute", "Climate Unit",
             "Institute of Mathematics", "Genome Centre", "Seismology Lab")
LAB_TEMPLATES = (
    "The {name} was founded in {year} in the town of {town}. Its director is {leader}, and about sixty "
    "researchers work there.",
    "The {name} stands in the city of {town}. It was founded in {year}, and {leader} has directed it since "
    "{year2}.",
    "Founded in {year} by {founder}, the {name} is located in {town}. Today it is headed by {leader}.",
)
PUBLISHER_KINDS = ("Press", "Books", "Editions", "House", "Publishing")
PUBLISHER_TEMPLATES = (
    "{name} was founded in {year} by {founder}. The publisher is based in the city of {town} and publishes "
    "novels and essays.",
    "{name} is a publishing house founded in {year} in the town of {town}. It is led by {leader} and "
    "publishes about fifteen novels a year.",
    "Founded in {year} by {founder}, {name} is based in {town}. Its publisher, {leader}, looks for debut "
    "novels.",
)
CLUB_PATTERNS = ("FC {town}", "{town} Athletic", "Sporting {town}", "{town} United", "Dynamo {town}",
                 "Real {town}", "{town} Rovers", "Olympique {town}", "{town} Town", "Union {town}")
CLUB_TEMPLATES = (
    "{name} was founded in {year}. The club plays its home matches at the {ground}, and its coach is {leader}.",
    "{name} plays at the {ground}. Its coach is {leader}, and the club was founded in {year} by {founder}.",
    "Founded in {year}, {name} is a club of the second division. Its home ground is the {ground}, and its "
    "manager is {leader}.",
)
GROUND_KINDS = ("Stadium", "Park", "Arena", "Ground", "Lane")
INSTRUMENTS = ("violin", "viola", "cello", "flute", "oboe", "trombone", "clarinet", "horn", "harp", "bassoon")
FIELDS = ("physicist", "chemist", "biologist", "linguist", "engineer", "astronomer", "geologist", "statistician")
POSITIONS = ("striker", "goalkeeper", "defender", "midfielder", "winger", "forward")
PER_DOMAIN = 30  # entries per kind
PEOPLE_PER_DOMAIN = 10


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def distractors(taken: set[str]) -> list[tuple[str, str, str]]:
    """Seeded directory entries of each kind, and people who belong to some of them (names not in `taken`)."""
    rng = random.Random(17)
    used = set(taken)
    assert not any(p in t for p in PLACE for t in taken), "a generated town is in a hand-written document"

    def fresh(make: Callable[[], str]) -> str:
        for _ in range(1000):
            value = make()
            if value not in used and not any(value in t for t in taken):
                used.add(value)
                return value
        raise RuntimeError("name pools exhausted")

    def person() -> str:
        return fresh(lambda: f"{rng.choice(FIRST)} {rng.choice(LAST)}")

    def place() -> str:  # towns are shared between entries, as in any region
        return rng.choice(PLACE)

    out: list[tuple[str, str, str]] = []

    def entries(prefix: str, kinds: Sequence[str], templates: Sequence[str], naming: Callable[[str, str], str],
                venue: Callable[[], str] | None, member: Callable[[str, str], str]) -> None:
        names = []
        for i in range(PER_DOMAIN):
            town, kind = place(), kinds[i % len(kinds)]
            name = fresh(lambda: naming(kind, town))  # noqa: B023 (called at once)
            year = rng.randrange(1870, 2016)
            fields = {"name": name, "town": town, "year": year, "year2": rng.randrange(max(year + 1, 1990), 2024),
                      "founder": person(), "leader": person()}
            if venue is not None:
                fields["hall" if prefix == "ens" else "ground"] = venue()
            text = templates[i % len(templates)].format(**fields)
            out.append((f"{prefix}-x{i:02d}", name, text[0].upper() + text[1:]))
            names.append(name)
        for i in range(PEOPLE_PER_DOMAIN):
            who = person()
            out.append((f"{prefix}-p{i:02d}", who, member(who, names[(i * 3) % len(names)])))

    entries("ens", ENSEMBLE_KINDS, ENSEMBLE_TEMPLATES, lambda k, t: f"{rng.choice(STEMS)} {k}",
            lambda: fresh(lambda: f"{rng.choice(STEMS)} {rng.choice(HALL_KINDS)}"),
            lambda who, where: f"{who} plays the {rng.choice(INSTRUMENTS)} in the {where}. "
                               f"{rng.choice(('She', 'He'))} also teaches at a music school.")
    entries("lab", LAB_KINDS, LAB_TEMPLATES, lambda k, t: f"{rng.choice(STEMS)} {k}", None,
            lambda who, where: f"{who} is {_a(rng.choice(FIELDS))} who works at the {where}. "
                               f"{rng.choice(('Her', 'His'))} group has published widely.")
    entries("pub", PUBLISHER_KINDS, PUBLISHER_TEMPLATES,
            lambda k, t: f"{rng.choice(STEMS)} {k}" if rng.random() < 0.8
            else f"{rng.choice(STEMS)} & {rng.choice(LAST)}", None,
            lambda who, where: f"The novel {rng.choice(STEMS)} {rng.choice(('Summer', 'Harbour', 'Letters', 'Road'))} "
                               f"by {who} was published by {where}.")
    entries("club", ("",), CLUB_TEMPLATES, lambda k, t: rng.choice(CLUB_PATTERNS).format(town=t),
            lambda: fresh(lambda: f"{rng.choice(STEMS)} {rng.choice(GROUND_KINDS)}"),
            lambda who, where: f"{who} is a {rng.choice(POSITIONS)} who plays for {where}. "
                               f"{rng.choice(('She', 'He'))} joined the club as a teenager.")
    return out


def check(docs: list[tuple[str, str, str]]) -> None:
    """What makes a question two-hop: the bridge is in both documents and not in the question, the answer
    only in the second, the subject only in the first; no generated entry names a bridge or a subject."""
    by_id = {d[0]: d for d in docs}
    assert len(by_id) == len(docs), "duplicate document ids"
    low = str.casefold
    generated = [d for d in docs if d[0] not in {h[0] for h in DOCS}]
    for qid, question, answers, bridge, a, b, split in QUESTIONS:
        first, second = low(by_id[a][2]), low(by_id[b][2])
        subject = low(by_id[a][1])
        assert split in ("test", "dev"), qid
        assert low(bridge) in first and low(bridge) in second, f"{qid}: the bridge must be in both documents"
        assert low(bridge) not in low(question), f"{qid}: the question names the bridge"
        assert any(low(x) in second for x in answers), f"{qid}: no answer in the second document"
        assert not any(low(x) in first for x in answers), f"{qid}: an answer is in the first document"
        assert subject not in second, f"{qid}: the second document names the subject"
        for doc_id, _, text in generated:
            assert low(bridge) not in low(text) and subject not in low(text), f"{qid}: {doc_id} names it"


def build() -> dict[str, str]:
    """{relative path: content} of every file of the set."""
    docs = DOCS + distractors({name for _, title, text in DOCS for name in (title, text)})
    check(docs)
    line = lambda row: json.dumps(row, ensure_ascii=False) + "\n"  # noqa: E731
    files = {
        "corpus.jsonl": "".join(line({"_id": i, "title": t, "text": x}) for i, t, x in docs),
        "queries.jsonl": "".join(line({"_id": q[0], "text": q[1]}) for q in QUESTIONS),
        "qa.jsonl": "".join(line({"_id": q, "question": text, "answers": answers, "bridge": bridge, "split": split})
                            for q, text, answers, bridge, _, _, split in QUESTIONS),
    }
    for split in ("test", "dev"):
        rows = [f"{q}\t{b}\t2\n{q}\t{a}\t1\n" for q, _, _, _, a, b, s in QUESTIONS if s == split]
        files[f"qrels/{split}.tsv"] = "query-id\tcorpus-id\tscore\n" + "".join(rows)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare with the files on disk")
    args = parser.parse_args()
    files = build()
    if args.check:
        stale = [p for p, text in files.items() if not (HERE / p).is_file() or (HERE / p).read_text("utf-8") != text]
        if stale:
            print(f"out of date: {', '.join(stale)} (run python datasets/multihop/build.py)", file=sys.stderr)
            return 1
        return 0
    for path, text in files.items():
        (HERE / path).parent.mkdir(parents=True, exist_ok=True)
        (HERE / path).write_text(text, encoding="utf-8")
    corpus = files["corpus.jsonl"].count("\n")
    print(f"{corpus} documents, {len(QUESTIONS)} questions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
